"""Live push under load: a stalled client, alarm floods and value coalescing.

A stalled client is modelled by bounding the test communicator's output
queue: the consumer's send then waits, as it does on a server whose
WebSocket send waits for the TCP buffer to drain (uvicorn, for example).
"""

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.utils.timezone import now as server_now
from django_tenants.utils import schema_context

from apps.alarms.choices import AlarmState, TransitionAction
from apps.alarms.models import Alarm
from apps.alarms.push import alarm_payload
from apps.alarms.transitions import change_state
from apps.dashboards import consumers
from apps.dashboards.consumers import CLOSE_RESYNC, OUTBOX_LIMIT
from apps.dashboards.groups import unit_group
from apps.dashboards.push import dropped_messages
from tests.conftest import SOCKET_TIMEOUT, TENANT_DOMAINS, access_token_for, admin_of
from thermacore.asgi import application

TRANSITIONS = 150


def _socket(token, query):
    return WebsocketCommunicator(
        application,
        f"/ws/live/?{query}",
        headers=[(b"host", TENANT_DOMAINS["alpha"].encode()), (b"authorization", f"Bearer {token}".encode())],
    )


def _stall(communicator, messages):
    """Let the client hold ``messages`` unread messages, after which the consumer's send waits."""
    communicator.output_queue._maxsize = messages


def _resume(communicator):
    communicator.output_queue._maxsize = 0


def _toggle_states(alarm_id, count):
    """Acknowledge and re-alarm the alarm ``count`` times, one transaction each; return the states in order."""
    states = []
    with schema_context("alpha"):
        for _ in range(count):
            with transaction.atomic():
                alarm = Alarm.objects.select_related("rule", "acknowledged_by").get(pk=alarm_id)
                if alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED:
                    changed = change_state(alarm, to_state=AlarmState.ACTIVE_ACKNOWLEDGED,
                                           action=TransitionAction.ACKNOWLEDGE, time=server_now(),
                                           acknowledged_at=server_now())
                else:
                    changed = change_state(alarm, to_state=AlarmState.ACTIVE_UNACKNOWLEDGED,
                                           action=TransitionAction.REALARM, time=server_now(), acknowledged_at=None)
                assert changed
                states.append(alarm.state)
    return states


def _open_alarms(unit_id):
    with schema_context("alpha"):
        alarms = Alarm.objects.open().filter(unit_id=unit_id).select_related("rule", "acknowledged_by").order_by("pk")
        return [alarm_payload(alarm) for alarm in alarms]


async def _receive_until_close(communicator):
    """Return the JSON messages the client receives before its close frame, and the close frame."""
    messages = []
    while True:
        output = await communicator.receive_output(timeout=SOCKET_TIMEOUT)
        if output["type"] == "websocket.close":
            return messages, output
        messages.append(json.loads(output["text"]))


@pytest.mark.asyncio
async def test_stalled_client_does_not_hold_back_others(committed_alarm, django_db_blocker, monkeypatch):
    # The stalled client's close frame waits until the test resumes reading, well after the flood.
    monkeypatch.setattr(consumers, "CLOSE_TIMEOUT_SECONDS", 120)
    alarm = committed_alarm
    with django_db_blocker.unblock():
        token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
        healthy = [_socket(token, f"unit={alarm.unit_id}&format=json") for _ in range(2)]
        stalled = _socket(token, f"unit={alarm.unit_id}&format=json")
        for communicator in [*healthy, stalled]:
            connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
            assert connected
        _stall(stalled, 2)
        dropped_before = await sync_to_async(dropped_messages)("alpha")

        started = time.monotonic()
        states = await sync_to_async(_toggle_states)(alarm.pk, TRANSITIONS)
        sending_seconds = time.monotonic() - started

        for communicator in healthy:
            received = [json.loads(await communicator.receive_from(timeout=SOCKET_TIMEOUT)) for _ in range(TRANSITIONS)]
            assert [message["seq"] for message in received] == list(range(1, TRANSITIONS + 1))
            assert [message["alarm"]["state"] for message in received] == states
            assert await communicator.receive_nothing(timeout=0.2)

        _resume(stalled)
        delivered, close = await _receive_until_close(stalled)
        dropped = await sync_to_async(dropped_messages)("alpha") - dropped_before

        reconnected = _socket(token, f"unit={alarm.unit_id}&format=json&snapshot=1")
        connected, _ = await reconnected.connect(timeout=SOCKET_TIMEOUT)
        assert connected
        snapshot = json.loads(await reconnected.receive_from(timeout=SOCKET_TIMEOUT))
        server_alarms = await sync_to_async(_open_alarms)(alarm.unit_id)
        for communicator in [*healthy, stalled, reconnected]:
            await communicator.disconnect()

    # The sender never waited for the stalled client, which read nothing while the states were sent.
    assert sending_seconds < 60
    assert close["code"] == CLOSE_RESYNC
    assert [message["seq"] for message in delivered] == list(range(1, len(delivered) + 1))
    assert len(delivered) < TRANSITIONS
    assert dropped >= OUTBOX_LIMIT
    assert len(delivered) + dropped <= TRANSITIONS
    assert snapshot["type"] == "alarms"
    assert snapshot["seq"] == 1
    assert snapshot["alarms"] == server_alarms
    assert snapshot["alarms"][0]["state"] == states[-1]


@pytest.mark.asyncio
async def test_values_coalesce_while_client_is_slow(committed_alarm, django_db_blocker):
    alarm = committed_alarm
    sensor_id = alarm.rule.sensor_id
    layer = get_channel_layer()
    start = datetime(2026, 1, 5, 10, tzinfo=timezone.utc)
    with django_db_blocker.unblock():
        token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
        communicator = _socket(token, f"unit={alarm.unit_id}&format=json")
        connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
        assert connected
        _stall(communicator, 1)
        for step in range(1, 51):
            reading = {"sensor": sensor_id, "time": (start + timedelta(seconds=step)).isoformat(),
                       "value": float(step), "quality": 0}
            await layer.group_send(unit_group("alpha", alarm.unit_id), {"type": "readings.update", "readings": [reading]})
        # An older reading arriving late must not replace the newest value.
        late = {"sensor": sensor_id, "time": start.isoformat(), "value": -1.0, "quality": 0}
        await layer.group_send(unit_group("alpha", alarm.unit_id), {"type": "readings.update", "readings": [late]})
        _resume(communicator)

        received = []
        while not await communicator.receive_nothing(timeout=0.5):
            received.append(json.loads(await communicator.receive_from(timeout=SOCKET_TIMEOUT)))
        await communicator.disconnect()

    values = [reading["value"] for message in received for reading in message["readings"]]
    assert values[-1] == 50.0
    assert values == sorted(values)
    assert -1.0 not in values
    assert len(received) < 50
    assert [message["seq"] for message in received] == list(range(1, len(received) + 1))


@pytest.mark.asyncio
async def test_snapshot_requires_json_format(committed_alarm, django_db_blocker):
    with django_db_blocker.unblock():
        token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
        communicator = _socket(token, f"unit={committed_alarm.unit_id}&snapshot=1")
        connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
        closed = await communicator.receive_output(timeout=SOCKET_TIMEOUT)

    assert connected
    assert closed["code"] == 4400
