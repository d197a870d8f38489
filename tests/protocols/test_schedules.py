import json
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_tenants.utils import schema_context

from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.protocols.choices import DeviceStatus
from apps.protocols.models import Device, PollGroup
from apps.protocols.polling import poll_due_devices
from apps.protocols.schedules import POLL_GROUP_TASK, poll_group
from apps.protocols.simulator.demo import configure_demo_plant
from apps.protocols.tasks import poll_group_task
from apps.telemetry.models import Reading
from apps.tenants.choices import TenantStatus
from apps.tenants.models import Tenant
from apps.tenants.scheduler import ActiveTenantScheduler
from tests.conftest import TENANT_DOMAINS, admin_of
from thermacore.celery import app


def test_poll_group_save_creates_beat_entry(alpha):
    group = PollGroup.objects.create(name="Boiler house", interval=7)

    task = PeriodicTask.objects.get(pk=group.periodic_task_id)
    assert task.name == f"poll-group-{group.pk}@alpha"
    assert task.task == POLL_GROUP_TASK
    assert json.loads(task.kwargs) == {"poll_group_id": group.pk}
    assert task.interval.every == 7
    assert task.interval.period == "seconds"
    assert task.enabled is True


def test_poll_group_edit_updates_beat_entry(alpha):
    group = PollGroup.objects.create(name="Chillers", interval=10)
    changed_before = PeriodicTask.objects.get(pk=group.periodic_task_id).date_changed

    group.interval = 30
    group.enabled = False
    group.save()

    task = PeriodicTask.objects.get(pk=group.periodic_task_id)
    assert PeriodicTask.objects.filter(task=POLL_GROUP_TASK).count() == 1
    assert task.interval.every == 30
    assert task.enabled is False
    assert task.date_changed >= changed_before


def test_poll_group_delete_removes_beat_entry(alpha):
    group = PollGroup.objects.create(name="Heat pumps", interval=5)
    task_id = group.periodic_task_id

    PollGroup.objects.filter(pk=group.pk).delete()

    assert not PeriodicTask.objects.filter(pk=task_id).exists()


def test_poll_group_rejects_subscribed_device(alpha):
    group = PollGroup.objects.create(name="Meters", interval=5)
    device = Device(name="Broker", protocol="mqtt", host="127.0.0.1", port=1883, poll_group=group)

    with pytest.raises(Exception) as raised:
        device.full_clean()

    assert "poll_group" in raised.value.message_dict


def test_grouped_device_waits_for_group_task(alpha, plant_simulator):
    configure_demo_plant(port=plant_simulator)
    group = PollGroup.objects.create(name="Plant", interval=5)
    grouped = Device.objects.order_by("pk").first()
    grouped.poll_group = group
    grouped.save()

    ungrouped_summary = poll_due_devices()

    assert ungrouped_summary.polled == Device.objects.count() - 1
    assert not Reading.objects.filter(sensor__points__device=grouped).exists()

    group_summary = poll_group_task(group.pk)

    grouped.refresh_from_db()
    assert group_summary == {"polled": 1, "failed": 0, "samples": grouped.points.count()}
    assert grouped.status == DeviceStatus.ONLINE
    assert Reading.objects.filter(sensor__points__device=grouped).count() == grouped.points.count()


def test_group_task_polls_healthy_device_every_run(alpha, plant_simulator):
    configure_demo_plant(port=plant_simulator, poll_interval=60)
    group = PollGroup.objects.create(name="Plant", interval=2)
    Device.objects.update(poll_group=group)
    device_count = Device.objects.count()

    first = poll_group(group.pk)
    second = poll_group(group.pk, now=timezone.now() + timedelta(seconds=2))

    assert first.polled == device_count
    assert second.polled == device_count


def test_group_task_skips_leased_and_backing_off_devices(alpha, plant_simulator):
    configure_demo_plant(port=plant_simulator)
    group = PollGroup.objects.create(name="Plant", interval=2)
    Device.objects.update(poll_group=group)
    leased, backing_off = Device.objects.order_by("pk")[:2]
    now = timezone.now()
    # A poll claimed just now holds its lease for the poll interval plus its budget.
    Device.objects.filter(pk=leased.pk).update(next_poll_at=now + timedelta(seconds=leased.poll_interval + 10))
    Device.objects.filter(pk=backing_off.pk).update(consecutive_failures=2, next_poll_at=now + timedelta(seconds=20))

    summary = poll_group(group.pk, now=now)

    assert summary.polled == Device.objects.count() - 2


def test_disabled_group_polls_nothing(alpha, plant_simulator):
    configure_demo_plant(port=plant_simulator)
    group = PollGroup.objects.create(name="Plant", interval=2, enabled=False)
    Device.objects.update(poll_group=group)

    summary = poll_group(group.pk)

    assert summary.polled == 0


def test_admin_edit_of_poll_group_is_audited(alpha):
    group = PollGroup.objects.create(name="Boilers", interval=5)
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(admin_of("alpha"))
    connection.set_tenant(alpha)

    response = client.post(
        f"/admin/protocols/pollgroup/{group.pk}/change/", {"name": "Boilers", "interval": 15, "enabled": "on"}
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert PeriodicTask.objects.get(pk=group.periodic_task_id).interval.every == 15
    entry = AuditEntry.objects.filter(action=AuditAction.OBJECT_UPDATED).latest("pk")
    assert entry.object_id == str(group.pk)
    assert "15" in json.dumps(entry.changes)


def test_admin_hides_beat_models(alpha_client):
    response = alpha_client.get("/admin/django_celery_beat/periodictask/")

    assert response.status_code == 404


@pytest.fixture
def committed_group(django_db_setup, django_db_blocker):
    """A poll group of alpha committed to the database, as beat reads it from another connection."""
    with django_db_blocker.unblock(), schema_context("alpha"):
        group = PollGroup.objects.create(name="Beat test group", interval=4)
    yield group
    with django_db_blocker.unblock(), schema_context("alpha"):
        PollGroup.objects.filter(pk=group.pk).delete()
    connection.set_schema_to_public()


def test_scheduler_reads_tenant_entry_and_its_change(committed_group, django_db_blocker):
    name = f"poll-group-{committed_group.pk}@alpha"
    with django_db_blocker.unblock():
        scheduler = ActiveTenantScheduler(app=app)
        entry = scheduler.schedule[name]

        assert entry.task == POLL_GROUP_TASK
        assert entry.kwargs == {"poll_group_id": committed_group.pk}
        assert entry.options["headers"]["_schema_name"] == "alpha"
        assert entry.schedule.run_every == timedelta(seconds=4)
        assert "poll-due-devices@__all_tenants_only__" in scheduler.schedule

        with schema_context("alpha"):
            group = PollGroup.objects.get(pk=committed_group.pk)
            group.interval = 9
            group.save()

        changed_schedule = scheduler.schedule

        assert changed_schedule[name].schedule.run_every == timedelta(seconds=9)


def test_scheduler_sends_group_task_to_its_tenant(committed_group, django_db_blocker):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("polling")
    with django_db_blocker.unblock():
        scheduler = ActiveTenantScheduler(app=app)
        entry = scheduler.schedule[f"poll-group-{committed_group.pk}@alpha"]

        scheduler.apply_entry(entry)

    messages = [json.loads(raw) for raw in broker.lrange("polling", 0, -1)]
    broker.delete("polling")
    assert len(messages) == 1
    headers = messages[0]["headers"]
    assert headers["task"] == POLL_GROUP_TASK
    assert headers["_schema_name"] == "alpha"


def test_scheduler_sends_settings_entry_to_each_tenant(django_db_setup, django_db_blocker):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("polling")
    with django_db_blocker.unblock():
        scheduler = ActiveTenantScheduler(app=app)
        # Entries read back from the database, as beat has them after any schedule change.
        entry = scheduler.all_as_schedule()["poll-due-devices@__all_tenants_only__"]

        scheduler.apply_entry(entry)

        active = set(Tenant.objects.active().exclude(schema_name="public").values_list("schema_name", flat=True))
    schemas = [json.loads(raw)["headers"]["_schema_name"] for raw in broker.lrange("polling", 0, -1)]
    broker.delete("polling")
    assert sorted(schemas) == sorted(active)
    assert "public" not in schemas


def test_scheduler_skips_entries_of_suspended_tenant(committed_group, django_db_blocker):
    with django_db_blocker.unblock():
        Tenant.objects.filter(schema_name="alpha").update(status=TenantStatus.SUSPENDED, suspended_at=timezone.now())
        try:
            schedule = ActiveTenantScheduler(app=app).schedule
        finally:
            Tenant.objects.filter(schema_name="alpha").update(status=TenantStatus.ACTIVE, suspended_at=None)

    assert f"poll-group-{committed_group.pk}@alpha" not in schedule
    assert "poll-due-devices@__all_tenants_only__" in schedule


def test_scheduler_disables_entries_removed_from_settings(django_db_setup, django_db_blocker):
    stale = "renamed-task@__all_tenants_only__"
    with django_db_blocker.unblock():
        PeriodicTask.objects.create(
            name=stale, task="protocols.poll_due_devices",
            interval=IntervalSchedule.objects.get_or_create(every=30, period="seconds")[0],
        )

        try:
            schedule = ActiveTenantScheduler(app=app).schedule
            still_enabled = PeriodicTask.objects.get(name=stale).enabled
        finally:
            PeriodicTask.objects.filter(name=stale).update(enabled=False)
    assert stale not in schedule
    assert still_enabled is False
    assert "poll-due-devices@__all_tenants_only__" in schedule
