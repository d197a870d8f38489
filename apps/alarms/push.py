"""WebSocket push of alarm changes to the clients watching a unit, sent after commit."""

import logging
from functools import partial

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction

from apps.telemetry.live_sequence import reserve_group_seqs

logger = logging.getLogger(__name__)

ALARM_MESSAGE_TYPE = "alarm.update"


def unit_group(schema, unit_id):
    # Same name as the dashboards' unit groups, which this app may not import.
    return f"{schema}.unit.{unit_id}"


def security_group(schema):
    """Return the Channels group of a tenant's security alarms, which have no unit."""
    return f"{schema}.alarms.security"


def alarm_payload(alarm):
    """Return the JSON-ready description of an occurrence that the alarm banner shows."""
    return {
        "id": alarm.pk,
        "source": alarm.source,
        "rule": alarm.rule_id,
        "sensor": alarm.sensor_id,
        "unit": alarm.unit_id,
        "message": alarm.message,
        "priority": alarm.priority,
        "priority_label": alarm.get_priority_display(),
        "state": alarm.state,
        "state_label": alarm.get_state_display(),
        "condition_active": alarm.condition_active,
        "condition_started_at": alarm.condition_started_at.isoformat(),
        "activated_at": alarm.activated_at.isoformat(),
        "returned_at": alarm.returned_at.isoformat() if alarm.returned_at else None,
        "acknowledged_at": alarm.acknowledged_at.isoformat() if alarm.acknowledged_at else None,
        "acknowledged_by": alarm.acknowledged_by.get_username() if alarm.acknowledged_by else None,
        "shelved_until": alarm.shelved_until.isoformat() if alarm.shelved_until else None,
        "backfilled": alarm.backfilled,
    }


def push_alarm_after_commit(alarm):
    """Send the occurrence's new state to its unit's group, or to the security group, once the transaction commits."""
    schema = connection.schema_name
    transaction.on_commit(partial(send_alarm_update, schema, alarm.unit_id, alarm_payload(alarm)))


def send_alarm_update(schema, unit_id, payload):
    send_alarm_updates(schema, [(unit_id, payload)])


def push_payloads_after_commit(messages):
    """Send ``(unit id, payload)`` messages in order once the current transaction commits, in one event loop call.

    The evaluator pushes all changes of a batch this way, because each
    ``async_to_sync`` call costs milliseconds of thread hand-over.
    """
    if messages:
        transaction.on_commit(partial(send_alarm_updates, connection.schema_name, list(messages)))


def send_alarm_updates(schema, messages):
    """Send ``(unit id, payload)`` messages in order, each numbered with the next ``group_seq`` of its group."""
    layer = get_channel_layer()
    if layer is None:
        return
    groups = [unit_group(schema, unit_id) if unit_id is not None else security_group(schema) for unit_id, _ in messages]
    counts = {}
    for group in groups:
        counts[group] = counts.get(group, 0) + 1
    try:
        next_seqs = reserve_group_seqs(schema, counts)
    except Exception:
        # Unnumbered messages still reach the clients, but a consumer cannot tell when one of them is lost.
        logger.exception("Reserving group sequence numbers for %d alarm messages of schema %s failed; "
                         "sending them unnumbered", len(messages), schema)
        next_seqs = {}

    async def send_in_order():
        for group, (_unit_id, payload) in zip(groups, messages):
            message = {"type": ALARM_MESSAGE_TYPE, "alarm": payload}
            if group in next_seqs:
                message.update(group=group, group_seq=next_seqs[group])
                next_seqs[group] += 1
            try:
                await layer.group_send(group, message)
            except Exception:
                # The change is committed and stays in the alarm list. The consumers of the group find its
                # group_seq missing and close their clients for a resync.
                logger.exception("Pushing alarm %s to group %s failed", payload["id"], group)

    async_to_sync(send_in_order)()
