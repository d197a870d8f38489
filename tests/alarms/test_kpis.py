from datetime import timedelta

import pytest

from apps.alarms.kpis import compute_kpis
from apps.alarms.models import Alarm, AlarmRule
from tests.factories import SensorFactory

from .conftest import T0, at

END = T0 + timedelta(minutes=30)


def new_rule(priority):
    return AlarmRule.objects.create(
        sensor=SensorFactory(minimum=0, maximum=200), condition="hi", limit=100.0, priority=priority
    )


@pytest.fixture
def alarm_history(alpha, feed):
    """13 annunciated activations in three 10-minute intervals, one backfilled alarm and one standing alarm."""
    chattering = new_rule("high")
    feed(chattering.sensor, *[(at(second), 105.0 if second % 20 == 0 else 90.0) for second in range(0, 50, 10)])
    others = [new_rule("low") for _ in range(9)]
    for offset, rule in enumerate(others):
        feed(rule.sensor, (at(60 + offset), 105.0))
    late = new_rule("critical")
    feed(late.sensor, (at(15 * 60), 105.0))
    backfilled = new_rule("critical")
    feed(backfilled.sensor, (at(1700), 50.0))
    feed(backfilled.sensor, (at(100), 105.0), (at(110), 50.0))
    standing = new_rule("medium")
    feed(standing.sensor, (T0 - timedelta(hours=25), 105.0))
    return {"chattering": chattering, "others": others, "standing": standing}


def test_kpis_rates_and_flood(alarm_history):
    kpis = compute_kpis(T0, END)

    assert kpis.annunciated == 13
    assert kpis.average_per_10_minutes == 4.33
    assert kpis.max_per_10_minutes == 12
    assert kpis.flood_percent == 33.33


def test_kpis_chattering_and_stale(alarm_history):
    kpis = compute_kpis(T0, END)

    assert [alarm.rule_id for alarm in kpis.chattering] == [alarm_history["chattering"].pk]
    assert kpis.chattering[0].activations == 3
    assert kpis.stale_alarm_ids == [Alarm.objects.get(rule=alarm_history["standing"]).pk]


def test_kpis_bad_actors_and_priorities(alarm_history):
    kpis = compute_kpis(T0, END)

    assert len(kpis.bad_actors) == 10
    assert kpis.bad_actors[0].rule_id == alarm_history["chattering"].pk
    assert kpis.bad_actors[0].count == 3
    assert kpis.bad_actors[0].share_percent == 23.08
    assert [actor.rule_id for actor in kpis.bad_actors[1:]] == [rule.pk for rule in alarm_history["others"]]
    assert kpis.priority_distribution == {"low": 69.23, "medium": 0.0, "high": 23.08, "critical": 7.69}


def test_chattering_alarm_gets_suggested_settings(alarm_history):
    kpis = compute_kpis(T0, END)

    # Excursions lasted 10 s and the value dipped to 90 below the limit of 100.
    assert kpis.chattering[0].suggested_on_delay == 10.0
    assert kpis.chattering[0].suggested_deadband == 10.0


CHATTER = [(at(second), 105.0 if second % 20 == 0 else 90.0) for second in range(0, 50, 10)]


@pytest.fixture
def suggestion(alpha, feed):
    """The suggested settings for a HI 100 alarm whose value swings 105, 90, 105, 90, 105 every 10 s."""
    rule = new_rule("high")
    feed(rule.sensor, *CHATTER)
    return compute_kpis(T0, END).chattering[0]


def test_suggested_on_delay_stops_chatter(suggestion, feed):
    calm = new_rule("high")
    AlarmRule.objects.filter(pk=calm.pk).update(on_delay=suggestion.suggested_on_delay)

    feed(calm.sensor, *CHATTER)

    assert not calm.alarms.exists()


def test_suggested_deadband_stops_chatter(suggestion, feed):
    calm = new_rule("high")
    AlarmRule.objects.filter(pk=calm.pk).update(deadband=suggestion.suggested_deadband)

    feed(calm.sensor, *CHATTER)

    alarm = calm.alarms.get()
    assert alarm.condition_active is True
    assert alarm.transitions.filter(action="activate").count() == 1


def test_kpis_of_quiet_window(alpha):
    kpis = compute_kpis(T0, END)

    assert kpis.annunciated == 0
    assert kpis.flood_percent == 0.0
    assert kpis.bad_actors == []
    assert kpis.priority_distribution == {"low": 0.0, "medium": 0.0, "high": 0.0, "critical": 0.0}


def test_kpis_reject_inverted_window(alpha):
    with pytest.raises(ValueError, match="must be before end"):
        compute_kpis(END, T0)


def test_kpis_over_api(alpha_api, alarm_history):
    response = alpha_api.get("/api/v1/alarms/kpis/", {"start": "2026-01-05T10:00:00Z", "end": "2026-01-05T10:30:00Z"})
    inverted = alpha_api.get("/api/v1/alarms/kpis/", {"start": "2026-01-05T10:30:00Z", "end": "2026-01-05T10:00:00Z"})

    assert response.status_code == 200
    assert response.data["annunciated"] == 13
    assert response.data["flood_percent"] == 33.33
    assert response.data["bad_actors"][0]["count"] == 3
    assert inverted.status_code == 400
    assert "before end" in str(inverted.data["start"])


def test_kpis_count_fleeting_activations(alpha, feed):
    fleeting = new_rule("high")
    feed(fleeting.sensor, (at(0), 105.0), (at(2), 90.0), (at(100), 105.0), (at(103), 90.0))
    lasting = new_rule("high")
    feed(lasting.sensor, (at(0), 105.0), (at(60), 90.0))

    kpis = compute_kpis(T0, END)
    stricter = compute_kpis(T0, END, fleeting_shorter_than=timedelta(seconds=3))

    assert kpis.fleeting == 2
    assert kpis.fleeting_rule_ids == [fleeting.pk]
    assert stricter.fleeting == 1
