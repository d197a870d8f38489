from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.alarms.choices import AlarmState
from apps.alarms.models import Alarm
from apps.alarms.tasks import deliver_notification_task, run_alarm_timers_task


def test_timer_task_name_is_stable():
    assert run_alarm_timers_task.name == "alarms.run_timers"
    assert deliver_notification_task.name == "alarms.deliver_notification"
    assert settings.CELERY_BEAT_SCHEDULE["run-alarm-timers"]["task"] == "alarms.run_timers"


def test_timer_task_raises_stale_alarm_in_its_schema(sensor, make_rule, feed):
    rule = make_rule(condition="stale", limit=None, stale_after=60)
    feed(sensor, (timezone.now() - timedelta(minutes=5), 50.0))

    with schema_context("alpha"):
        counts = run_alarm_timers_task.apply().get()

    assert counts == {
        "stale": 1, "on_delay": 0, "realarmed": 0, "escalated": 0, "unsuppressed": 0, "unshelved": 0,
        "security_returned": 0,
    }
    assert Alarm.objects.get(rule=rule).state == AlarmState.ACTIVE_UNACKNOWLEDGED
