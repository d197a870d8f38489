// Trend charts of the unit page: the last hour from the API, then every live
// value that the WebSocket swaps into the page.
(function () {
  "use strict";

  var HISTORY_SECONDS = 3600;
  var charts = {};

  function fetchHistory(sensorId) {
    var start = new Date(Date.now() - HISTORY_SECONDS * 1000).toISOString();
    var url = "/api/v1/sensors/" + sensorId + "/readings/?page_size=5000&start=" + encodeURIComponent(start);
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("Loading readings of sensor " + sensorId + " failed with HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (body) {
        var times = [];
        var values = [];
        body.results.forEach(function (reading) {
          times.push(Date.parse(reading.time) / 1000);
          values.push(reading.value);
        });
        return [times, values];
      });
  }

  function createChart(figure) {
    var sensorId = figure.dataset.trendSensor;
    fetchHistory(sensorId)
      .then(function (data) {
        var options = {
          width: Math.max(figure.clientWidth, 300),
          height: 160,
          legend: { show: false },
          series: [{}, { label: figure.dataset.trendLabel, stroke: "#c0392b", width: 1.5, spanGaps: false }],
        };
        charts[sensorId] = { plot: new uPlot(options, data, figure), data: data };
      })
      .catch(function (error) {
        figure.insertAdjacentHTML("beforeend", '<p class="error"></p>');
        figure.lastChild.textContent = error.message;
      });
  }

  function appendLiveValue(element) {
    var chart = charts[element.dataset.sensor];
    if (!chart || !element.dataset.time) {
      return;
    }
    var time = Date.parse(element.dataset.time) / 1000;
    var value = element.dataset.value === "" ? null : Number(element.dataset.value);
    var times = chart.data[0];
    if (times.length && time <= times[times.length - 1]) {
      return;
    }
    times.push(time);
    chart.data[1].push(value);
    while (times.length && times[0] < time - HISTORY_SECONDS) {
      times.shift();
      chart.data[1].shift();
    }
    chart.plot.setData(chart.data);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-trend-sensor]").forEach(createChart);
    new MutationObserver(function (mutations) {
      mutations.forEach(function (mutation) {
        mutation.addedNodes.forEach(function (node) {
          if (node.nodeType === 1 && node.dataset && node.dataset.sensor) {
            appendLiveValue(node);
          }
        });
      });
    }).observe(document.body, { childList: true, subtree: true });
  });
})();
