"""Sender-side group_seq numbers, and the live consumer that closes a client when the channel layer dropped some.

The sockets run over the real Redis channel layer of the test settings.
"""

import asyncio
import copy
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import connection
from django_tenants.utils import schema_context

from apps.alarms.models import Alarm
from apps.alarms.push import alarm_payload, send_alarm_updates
from apps.dashboards import consumers
from apps.dashboards.consumers import CLOSE_RESYNC
from apps.dashboards.groups import unit_group
from apps.dashboards.push import dropped_messages, push_readings
from apps.dashboards.sequence import MAX_AHEAD, GroupSeqGaps
from apps.sensors.samples import Sample
from apps.telemetry.live_sequence import current_group_seqs, group_seq_key
from tests.conftest import SOCKET_TIMEOUT, TENANT_DOMAINS, access_token_for, admin_of
from tests.factories import SensorFactory
from thermacore.asgi import application

# Short, so that a test waits through several checks within a second.
GAP_CHECK_SECONDS = 0.1
# A channel-layer capacity that the overflow test exceeds fivefold.
SMALL_CAPACITY = 10
# Raw layer receives: the senders returned before, so a message missing after this wait was never sent.
RECEIVE_TIMEOUT = 1


@pytest.fixture
def fast_gap_checks(monkeypatch):
    monkeypatch.setattr(consumers, "GAP_CHECK_SECONDS", GAP_CHECK_SECONDS)


@pytest.fixture
def extra_units(django_db_setup, django_db_blocker):
    """Two committed units of alpha with one sensor each: a second followed unit and one the socket does not follow."""
    with django_db_blocker.unblock(), schema_context("alpha"):
        sensors = [SensorFactory(), SensorFactory()]
    yield sensors
    with django_db_blocker.unblock(), schema_context("alpha"):
        for sensor in sensors:
            unit = sensor.unit
            sensor.delete()
            unit.delete()
            unit.site.delete()
    connection.set_schema_to_public()


def _socket(token, query):
    return WebsocketCommunicator(
        application,
        f"/ws/live/?{query}",
        headers=[(b"host", TENANT_DOMAINS["alpha"].encode()), (b"authorization", f"Bearer {token}".encode())],
    )


def _payload(alarm_id):
    with schema_context("alpha"):
        return alarm_payload(Alarm.objects.select_related("rule", "acknowledged_by").get(pk=alarm_id))


def _numbered(payload, count, start=1):
    """Return ``count`` copies of ``payload`` whose ids count up from ``start``, so the test can tell them apart."""
    return [{**payload, "id": start + index} for index in range(count)]


async def _open(token, query):
    communicator = _socket(token, query)
    connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
    assert connected
    return communicator


async def _receive_until_close(communicator):
    """Return the JSON messages the client receives before its close frame, and the close frame."""
    messages = []
    while True:
        output = await communicator.receive_output(timeout=SOCKET_TIMEOUT)
        if output["type"] == "websocket.close":
            return messages, output
        messages.append(json.loads(output["text"]))


async def _receive_alarms(communicator, count):
    """Return the alarms of the next ``count`` alarm messages, skipping readings messages."""
    alarms = []
    while len(alarms) < count:
        message = json.loads(await communicator.receive_from(timeout=SOCKET_TIMEOUT))
        if message["type"] == "alarm":
            alarms.append(message["alarm"])
    return alarms


async def _receive_rest(communicator):
    """Return the messages that arrive until the socket has been quiet through several gap checks."""
    messages = []
    while not await communicator.receive_nothing(timeout=GAP_CHECK_SECONDS * 5):
        output = await communicator.receive_output(timeout=SOCKET_TIMEOUT)
        messages.append(output)
    return messages


def _send_while_event_loop_waits(messages):
    """Send the alarm messages from another thread while this thread's event loop, and so the consumer, waits.

    A consumer that reads along would never let its channel fill, so the
    whole flood reaches the channel layer before the consumer reads any.
    """
    sender = threading.Thread(target=send_alarm_updates, args=("alpha", messages))
    sender.start()
    sender.join()


def _receive_raw(layer, channel):
    async def receive_all():
        messages = []
        while True:
            try:
                messages.append(await asyncio.wait_for(layer.receive(channel), timeout=RECEIVE_TIMEOUT))
            except TimeoutError:
                return messages

    return async_to_sync(receive_all)()


def test_alarm_batch_numbers_each_group(alpha):
    layer = get_channel_layer()
    groups = [unit_group("alpha", 1), unit_group("alpha", 2)]
    channels = {}
    for group in groups:
        channels[group] = async_to_sync(layer.new_channel)()
        async_to_sync(layer.group_add)(group, channels[group])
    before = current_group_seqs("alpha", groups)
    payload = {"id": 0}

    send_alarm_updates("alpha", [(1, payload), (2, payload), (1, payload), (3, payload), (1, payload)])
    send_alarm_updates("alpha", [(2, payload)])

    for group, count in [(groups[0], 3), (groups[1], 2)]:
        messages = _receive_raw(layer, channels[group])
        assert [message["group"] for message in messages] == [group] * count
        assert [message["group_seq"] for message in messages] == list(range(before[group] + 1, before[group] + 1 + count))
    assert current_group_seqs("alpha", [unit_group("alpha", 3)]) == {unit_group("alpha", 3): 1}


def test_readings_push_numbers_each_unit(alpha):
    layer = get_channel_layer()
    sensor = SensorFactory()
    group = unit_group("alpha", sensor.unit_id)
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(group, channel)
    start = datetime(2026, 1, 1, tzinfo=UTC)

    for step in range(3):
        push_readings("alpha", [Sample(sensor.pk, start + timedelta(seconds=step), float(step), 0)], {sensor.pk})

    messages = _receive_raw(layer, channel)
    assert [message["type"] for message in messages] == ["readings.update"] * 3
    assert [message["group_seq"] for message in messages] == [1, 2, 3]
    assert {message["group"] for message in messages} == {group}


def test_group_seq_key_is_tenant_key():
    assert group_seq_key("alpha", "alpha.unit.7") == "thermacore:alpha:live:group-seq:alpha.unit.7"


def test_gaps_tolerate_reordering():
    gaps = GroupSeqGaps({"g": 10})

    for seq in [12, 11, 14, 13]:
        assert not gaps.receive("g", seq)

    assert gaps.missing("g", 14) == 0
    assert gaps.check({"g": 14}) == {}
    assert not gaps.has_missing()


def test_gaps_ignore_numbers_before_baseline():
    gaps = GroupSeqGaps({"g": 10})

    assert not gaps.receive("g", 9)
    assert not gaps.receive("g", 11)

    assert gaps.check({"g": 11}) == {}


def test_gap_lost_only_without_progress():
    gaps = GroupSeqGaps({"g": 0})
    gaps.receive("g", 1)
    gaps.receive("g", 3)

    assert gaps.check({"g": 5}) == {}
    assert gaps.has_missing()
    assert gaps.check({"g": 5}) == {"g": 3}


def test_gap_progress_defers_loss():
    gaps = GroupSeqGaps({"g": 0})
    gaps.receive("g", 2)

    assert gaps.check({"g": 3}) == {}
    gaps.receive("g", 1)
    assert gaps.check({"g": 3}) == {}
    gaps.receive("g", 3)
    assert gaps.check({"g": 3}) == {}
    assert not gaps.has_missing()


def test_check_covers_active_and_missing_groups():
    gaps = GroupSeqGaps({"a": 0, "b": 0, "c": 0})
    gaps.receive("a", 1)
    gaps.receive("b", 2)

    assert gaps.take_groups_to_check() == ["a", "b"]
    assert not gaps.has_unchecked()
    assert gaps.check({"a": 1, "b": 2}) == {}
    assert gaps.take_groups_to_check() == ["b"]
    gaps.receive("c", 1)
    assert gaps.has_unchecked()
    assert gaps.take_groups_to_check() == ["b", "c"]


def test_first_message_sets_baseline():
    gaps = GroupSeqGaps({})

    assert not gaps.receive("g", 40)
    assert not gaps.receive("g", 41)

    assert gaps.check({"g": 41}) == {}


def test_too_many_ahead_is_lost_at_once():
    gaps = GroupSeqGaps({"g": 0})

    results = [gaps.receive("g", seq) for seq in range(2, MAX_AHEAD + 3)]

    assert results[:-1] == [False] * MAX_AHEAD
    assert results[-1] is True
    assert gaps.missing("g") == 1


@pytest.mark.asyncio
async def test_layer_overflow_closes_4409(committed_alarm, django_db_blocker, settings, fast_gap_checks):
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["capacity"] = SMALL_CAPACITY
    settings.CHANNEL_LAYERS = layers
    flood = SMALL_CAPACITY * 5
    alarm = committed_alarm
    with django_db_blocker.unblock():
        payload = await sync_to_async(_payload)(alarm.pk)
        token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
        communicator = await _open(token, f"unit={alarm.unit_id}&format=json")
        dropped_before = await sync_to_async(dropped_messages)("alpha")

        _send_while_event_loop_waits([(alarm.unit_id, item) for item in _numbered(payload, flood)])
        delivered, close = await _receive_until_close(communicator)
        dropped = await sync_to_async(dropped_messages)("alpha") - dropped_before
        await communicator.disconnect()

    assert close["code"] == CLOSE_RESYNC
    assert 0 < len(delivered) < flood
    assert [message["seq"] for message in delivered] == list(range(1, len(delivered) + 1))
    assert [message["alarm"]["id"] for message in delivered] == list(range(1, len(delivered) + 1))
    assert dropped == flood - len(delivered)


@pytest.mark.asyncio
async def test_interleaved_groups_stay_open(committed_alarm, extra_units, django_db_blocker, fast_gap_checks):
    alarm = committed_alarm
    second, unfollowed = extra_units
    rounds = 20
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with django_db_blocker.unblock():
        payload = await sync_to_async(_payload)(alarm.pk)
        token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
        communicator = await _open(token, f"unit={alarm.unit_id}&unit={second.unit_id}&format=json")
        dropped_before = await sync_to_async(dropped_messages)("alpha")

        expected_ids = []
        for step in range(rounds):
            batch = [
                (alarm.unit_id, {**payload, "id": 3 * step + 1}),
                (unfollowed.unit_id, {**payload, "id": 3 * step + 2}),
                (second.unit_id, {**payload, "id": 3 * step + 3}),
            ]
            expected_ids += [3 * step + 1, 3 * step + 3]
            await sync_to_async(send_alarm_updates)("alpha", batch)
            samples = [Sample(sensor_id, start + timedelta(seconds=step), float(step), 0)
                       for sensor_id in [alarm.rule.sensor_id, second.pk, unfollowed.pk]]
            await sync_to_async(push_readings)("alpha", samples, {alarm.rule.sensor_id, second.pk, unfollowed.pk})
        alarms = await _receive_alarms(communicator, len(expected_ids))
        rest = await _receive_rest(communicator)
        dropped = await sync_to_async(dropped_messages)("alpha") - dropped_before
        await communicator.disconnect()

    assert [item["id"] for item in alarms] == expected_ids
    assert [output["type"] for output in rest if output["type"] != "websocket.send"] == []
    assert all(json.loads(output["text"])["type"] == "readings" for output in rest)
    assert dropped == 0


@pytest.mark.asyncio
async def test_mid_stream_join_is_no_gap(committed_alarm, django_db_blocker, fast_gap_checks):
    alarm = committed_alarm
    before_join, after_join = 10, 5
    with django_db_blocker.unblock():
        payload = await sync_to_async(_payload)(alarm.pk)
        token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
        # A member that stays, so that the group's messages are sent to a channel before the socket joins.
        layer = get_channel_layer()
        watcher = await layer.new_channel()
        await layer.group_add(unit_group("alpha", alarm.unit_id), watcher)
        await sync_to_async(send_alarm_updates)(
            "alpha", [(alarm.unit_id, item) for item in _numbered(payload, before_join)]
        )
        communicator = await _open(token, f"unit={alarm.unit_id}&format=json")
        dropped_before = await sync_to_async(dropped_messages)("alpha")

        await sync_to_async(send_alarm_updates)(
            "alpha", [(alarm.unit_id, item) for item in _numbered(payload, after_join, start=before_join + 1)]
        )
        alarms = await _receive_alarms(communicator, after_join)
        rest = await _receive_rest(communicator)
        dropped = await sync_to_async(dropped_messages)("alpha") - dropped_before
        await communicator.disconnect()
        await layer.group_discard(unit_group("alpha", alarm.unit_id), watcher)

    assert [item["id"] for item in alarms] == list(range(before_join + 1, before_join + after_join + 1))
    assert rest == []
    assert dropped == 0


@pytest.mark.asyncio
async def test_join_during_flood_is_no_gap(committed_alarm, django_db_blocker, fast_gap_checks):
    alarm = committed_alarm
    after_join = 20
    joined = threading.Event()
    with django_db_blocker.unblock():
        payload = await sync_to_async(_payload)(alarm.pk)
        token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
        dropped_before = await sync_to_async(dropped_messages)("alpha")

        def send_until_joined():
            """Send one message per batch until the socket joined, then ``after_join`` more; return how many."""
            sent = 0
            remaining = after_join
            while remaining:
                send_alarm_updates("alpha", [(alarm.unit_id, {**payload, "id": sent})])
                sent += 1
                if joined.is_set():
                    remaining -= 1
            return sent

        sender = asyncio.ensure_future(sync_to_async(send_until_joined, thread_sensitive=False)())
        communicator = await _open(token, f"unit={alarm.unit_id}&format=json")
        joined.set()
        sent = await sender
        # Up to the last message sent, however slowly a loaded machine delivers it, then whatever follows.
        outputs = []
        while not outputs or json.loads(outputs[-1]["text"])["alarm"]["id"] != sent - 1:
            outputs.append(await communicator.receive_output(timeout=SOCKET_TIMEOUT))
            assert outputs[-1]["type"] == "websocket.send", outputs[-1]
        outputs += await _receive_rest(communicator)
        dropped = await sync_to_async(dropped_messages)("alpha") - dropped_before
        await communicator.disconnect()

    assert [output["type"] for output in outputs if output["type"] != "websocket.send"] == []
    ids = [json.loads(output["text"])["alarm"]["id"] for output in outputs]
    # The socket gets the messages sent after it joined, in order and without a break.
    assert len(ids) >= after_join
    assert ids == list(range(sent - len(ids), sent))
    assert dropped == 0
