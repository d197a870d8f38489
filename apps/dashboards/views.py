from django.db import connection
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404, render

from apps.accounts.decorators import capability_required
from apps.accounts.roles import Capability
from apps.sensors.models import Sensor
from apps.sensors.quality import is_bad, quality_label
from apps.telemetry.latest import get_latest
from apps.units.models import Site, Unit


def _with_latest(sensors):
    latest = get_latest(connection.schema_name, [sensor.id for sensor in sensors])
    for sensor in sensors:
        time, value, quality = latest.get(sensor.id, (None, None, None))
        sensor.latest_time = time
        sensor.latest_value = value
        sensor.latest_quality = quality
        sensor.latest_quality_label = quality_label(quality) if quality is not None else "No data"
        sensor.latest_bad = quality is not None and is_bad(quality)
    return sensors


@capability_required(Capability.VIEW_PLANT)
def live(request):
    """List every site and unit with the latest value of each sensor, kept live over a WebSocket."""
    sites = list(
        Site.objects.prefetch_related(
            Prefetch("units", queryset=Unit.objects.prefetch_related("sensors"))
        )
    )
    _with_latest([sensor for site in sites for unit in site.units.all() for sensor in unit.sensors.all()])
    return render(request, "dashboards/live.html", {"sites": sites})


@capability_required(Capability.VIEW_PLANT)
def unit_detail(request, pk):
    """Show one unit's sensors with live values and a trend chart of the last hour."""
    unit = get_object_or_404(Unit.objects.select_related("site"), pk=pk)
    sensors = _with_latest(list(Sensor.objects.filter(unit=unit)))
    return render(request, "dashboards/unit_detail.html", {"unit": unit, "sensors": sensors})
