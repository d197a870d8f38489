"""Poll groups as django-celery-beat periodic tasks of the tenant schema.

Each ``PollGroup`` owns one ``PeriodicTask`` in the same schema that sends
``protocols.poll_group`` every ``interval`` seconds. Beat
(``apps.tenants.scheduler.ActiveTenantScheduler``) reads the periodic tasks of every
active tenant schema and re-reads them after any change, so an edited interval takes
effect within ``CELERY_BEAT_MAX_LOOP_INTERVAL`` seconds without restarting beat.
"""

import json
import logging
from datetime import timedelta

from django.db import connection
from django.db.models import DateTimeField, ExpressionWrapper, F, Q, Value
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from .models import Device, PollGroup
from .polling import PollSummary, poll_due_devices

logger = logging.getLogger(__name__)

POLL_GROUP_TASK = "protocols.poll_group"


def periodic_task_name(group):
    """Return the beat entry name of ``group``, which must be unique across all schemas."""
    return f"poll-group-{group.pk}@{connection.schema_name}"


def sync_periodic_task(group):
    """Create or update the periodic task that polls ``group``, with the group's interval and enabled flag."""
    schedule, _ = IntervalSchedule.objects.get_or_create(every=group.interval, period=IntervalSchedule.SECONDS)
    values = {
        "name": periodic_task_name(group),
        "task": POLL_GROUP_TASK,
        "interval": schedule,
        "kwargs": json.dumps({"poll_group_id": group.pk}),
        "enabled": group.enabled,
        # A poll that waited a whole interval in the queue is stale: the next one is already sent.
        "expire_seconds": group.interval,
        "description": f"Polls the devices of poll group {group.name!r}.",
    }
    task = group.periodic_task
    if task is None:
        task = PeriodicTask.objects.create(**values)
        PollGroup.objects.filter(pk=group.pk).update(periodic_task=task)
        group.periodic_task = task
    else:
        for name, value in values.items():
            setattr(task, name, value)
        # PeriodicTask.save() marks the schedule as changed, which makes beat re-read it.
        task.save()
    logger.info(
        "Schema %s: poll group %s (id %s) scheduled every %d s, %s",
        connection.schema_name, group.name, group.pk, group.interval, "enabled" if group.enabled else "disabled",
    )
    return task


@receiver(post_delete, sender=PollGroup)
def delete_periodic_task(sender, instance, **kwargs):
    """Remove the beat entry of a deleted poll group, so beat stops sending its task."""
    if instance.periodic_task_id is not None:
        PeriodicTask.objects.filter(pk=instance.periodic_task_id).delete()
        logger.info(
            "Schema %s: poll group %s (id %s) deleted with its beat entry",
            connection.schema_name, instance.name, instance.pk,
        )


def due_group_devices(group, now):
    """Return the enabled devices of ``group`` that its poll task may claim at ``now``.

    A healthy device is claimed unless its lease shows a poll still within its time budget.
    The claim moves ``next_poll_at`` to claim time + poll interval + budget, and a finished
    poll sets it to at most the finish time + poll interval. A failing device waits out
    its back-off, which ends at ``next_poll_at``.
    """
    second = Value(timedelta(seconds=1))
    healthy_horizon = ExpressionWrapper(Value(now) + F("poll_interval") * second, output_field=DateTimeField())
    return Device.objects.enabled().filter(poll_group=group).filter(
        Q(consecutive_failures=0, next_poll_at__lte=healthy_horizon) | Q(next_poll_at__lte=now)
    )


def poll_group(poll_group_id, now=None):
    """Poll the due devices of one poll group in the current schema and return the summary."""
    now = now or timezone.now()
    group = PollGroup.objects.filter(pk=poll_group_id).first()
    if group is None or not group.enabled:
        # Beat may send one more task after the group was deleted or disabled.
        logger.info(
            "Schema %s: poll group %s is %s; nothing polled",
            connection.schema_name, poll_group_id, "disabled" if group else "not found",
        )
        return PollSummary()
    return poll_due_devices(now, candidates=due_group_devices(group, now))
