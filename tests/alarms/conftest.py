"""Fixtures of the alarm tests: a sensor of tenant alpha and a way to feed it readings through ingest."""

from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django_tenants.utils import schema_context

from apps.alarms.models import AlarmRule
from apps.sensors.samples import Sample
from apps.telemetry.ingest import ingest
from tests.conftest import admin_of
from tests.factories import SensorFactory

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=timezone.utc)


def at(seconds):
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def sensor(alpha):
    return SensorFactory(minimum=0, maximum=200)


@pytest.fixture
def admin(alpha):
    return admin_of("alpha")


@pytest.fixture
def make_rule(sensor):
    def make_rule(**fields):
        values = {"sensor": sensor, "condition": "hi", "limit": 100.0, "priority": "high", **fields}
        return AlarmRule.objects.create(**values)

    return make_rule


@pytest.fixture
def feed(django_capture_on_commit_callbacks):
    """Ingest readings of one sensor as one message and run the after-commit work (evaluation, push)."""

    def feed(sensor, *readings):
        samples = [Sample(sensor.id, time, value, *quality) for time, value, *quality in readings]
        with django_capture_on_commit_callbacks(execute=True):
            return ingest("alpha", samples)

    return feed


@pytest.fixture
def committed_alarm(committed_alarm, django_db_blocker):
    """The shared committed alarm in alpha, with two operators that are committed too."""
    with django_db_blocker.unblock(), schema_context("alpha"):
        users = [get_user_model().objects.create_user(f"operator-{n}", password="x") for n in (1, 2)]
    yield committed_alarm, users
    with django_db_blocker.unblock(), schema_context("alpha"):
        get_user_model().objects.filter(pk__in=[user.pk for user in users]).delete()
    connection.set_schema_to_public()


@pytest.fixture
def eager_tasks():
    """Run Celery tasks in the calling thread, retries included, as a worker would run them."""
    from thermacore.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous
