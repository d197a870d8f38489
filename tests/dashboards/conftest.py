"""Fixtures of the live-push tests: an alarm committed in alpha, so that consumer threads see it."""

import pytest
from django.db import connection
from django.utils.timezone import now as server_now
from django_tenants.utils import schema_context

from apps.alarms.choices import AlarmState
from apps.alarms.models import Alarm, AlarmRule
from tests.factories import SensorFactory


@pytest.fixture
def committed_alarm(django_db_setup, django_db_blocker):
    """An active, unacknowledged alarm of a HI rule in alpha, committed and removed afterwards."""
    with django_db_blocker.unblock(), schema_context("alpha"):
        sensor = SensorFactory()
        rule = AlarmRule.objects.create(sensor=sensor, condition="hi", limit=100.0)
        now = server_now()
        alarm = Alarm.objects.create(
            rule=rule,
            unit_id=sensor.unit_id,
            priority=rule.priority,
            message=rule.text,
            state=AlarmState.ACTIVE_UNACKNOWLEDGED,
            condition_started_at=now,
            activated_at=now,
        )
        yield alarm
        Alarm.objects.filter(rule=rule).delete()
        rule.delete()
        unit = sensor.unit
        sensor.delete()
        unit.delete()
        unit.site.delete()
    connection.set_schema_to_public()
