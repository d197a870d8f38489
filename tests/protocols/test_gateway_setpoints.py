"""DNP3 setpoints routed through the running gateway's master, against a yadnp3 outstation on loopback.

A TCP relay in front of the outstation counts the master connections, so the tests can show
that a write through the gateway opens none beside the gateway's own. The gateway runs under
async_to_sync as in test_gateway, and write_setpoint runs on the test's thread through
sync_to_async, where the test's uncommitted rows are visible.
"""

import asyncio
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from apps.accounts.choices import Role
from apps.audit.choices import AuditAction, Outcome
from apps.audit.models import AuditEntry
from apps.protocols import gateway_commands
from apps.protocols.gateway import SupervisedConnection
from apps.protocols.gateway_commands import advertisement_key, command_key, connection_digest, reply_key
from apps.protocols.models import Device, Point
from apps.protocols.services import SetpointError, write_setpoint
from apps.telemetry.latest import get_client
from tests.conftest import ServerThread, free_port_in
from tests.factories import DeviceFactory, PointFactory, SensorFactory
from tests.protocols.test_dnp3_setpoints import MASTER_ADDRESS, OUTSTATION_ADDRESS, CommandOutstation
from tests.protocols.test_gateway import connected, fast_gateway, run_gateway_during

pytestmark = pytest.mark.slow

# Ports of this module's outstations and relays. Other suites running beside it use other ranges.
OUTSTATION_PORTS = range(24300, 24350)
RELAY_PORTS = range(24350, 24400)


class CountingRelay:
    """A TCP relay on loopback that forwards to the outstation and counts the connections masters open."""

    def __init__(self, target_port):
        self.port = free_port_in(RELAY_PORTS)
        self.target_port = target_port
        self.accepted = 0
        # While set, the relay closes every connection at once, as a broken link does.
        self.link_broken = False
        self.writers = []
        self.handlers = set()
        self.thread = ServerThread(self._serve)

    async def _serve(self, ready):
        server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        try:
            async with server:
                ready.set()
                await server.serve_forever()
        finally:
            # Ends the open connections while the loop runs, so none is left to close on a closed loop.
            for handler in self.handlers:
                handler.cancel()
            await asyncio.gather(*self.handlers, return_exceptions=True)

    async def _relay(self, reader, writer):
        self.handlers.add(asyncio.current_task())
        self.accepted += 1
        if self.link_broken:
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, upstream_writer]
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    def start(self):
        self.thread.start()
        return self

    def break_link(self):
        """Close the open connections and every later one."""

        def close_all():
            self.link_broken = True
            for writer in self.writers:
                writer.close()

        self.thread.loop.call_soon_threadsafe(close_all)

    def stop(self):
        self.thread.stop()


async def _pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
def outstation():
    server = CommandOutstation(port=free_port_in(OUTSTATION_PORTS))
    server.set_outputs(binary=[(index, False) for index in range(5)], analog=[(index, 0.0) for index in range(5)])
    yield server
    server.stop()


@pytest.fixture
def relay(outstation):
    relay = CountingRelay(outstation.port).start()
    yield relay
    relay.stop()


@pytest.fixture
def operator(alpha):
    return get_user_model().objects.create_user("operator", password="Operator-password-4711", role=Role.OPERATOR)


@pytest.fixture
def outputs(relay):
    """An analog output (float32, direct operate, scale 0.1) and a latching binary output of one device behind the relay."""
    device = DeviceFactory(
        protocol="dnp3", port=relay.port, timeout=1.0,
        dnp3_master_address=MASTER_ADDRESS, dnp3_outstation_address=OUTSTATION_ADDRESS,
    )
    analog = PointFactory(
        device=device, sensor=SensorFactory(minimum=-1000, maximum=1000), register_type="holding", address=None,
        dnp3_type="analog_output_status", dnp3_index=3, data_type="float32", scale=0.1,
        dnp3_operate_mode="direct_operate",
    )
    binary = PointFactory(
        device=device, sensor=SensorFactory(minimum=0, maximum=1), register_type="holding", address=None,
        dnp3_type="binary_output_status", dnp3_index=2, data_type="bool",
    )
    return analog, binary


async def advertised(schema, device_id, timeout=10):
    """Return the id of the gateway that advertises the device, once it does."""
    deadline = time.monotonic() + timeout
    while True:
        gateway_id = await asyncio.to_thread(get_client().get, advertisement_key(schema, device_id))
        if gateway_id is not None:
            return gateway_id.decode()
        if time.monotonic() > deadline:
            raise AssertionError(f"No gateway advertised device {device_id} of schema {schema} within {timeout} s")
        await asyncio.sleep(0.05)


def setpoint_entries(point):
    return list(AuditEntry.objects.filter(action=AuditAction.SETPOINT_WRITTEN, object_id=str(point.pk)))


def test_writes_go_through_gateway_master(alpha, outstation, relay, outputs, operator, caplog):
    analog, binary = outputs
    device = analog.device
    gateway = fast_gateway()
    caplog.set_level(logging.INFO, logger="apps.protocols.gateway_commands")

    async def scenario():
        await connected(gateway, 1)
        await advertised("alpha", device.pk)
        supervised = gateway.connections[("alpha", device.pk)]
        driver_before = supervised.driver
        analog_result = await sync_to_async(write_setpoint, thread_sensitive=True)(analog, 12.5, actor=operator)
        binary_result = await sync_to_async(write_setpoint, thread_sensitive=True)(binary, 1, actor=operator)
        return analog_result, binary_result, driver_before, supervised

    analog_result, binary_result, driver_before, supervised = run_gateway_during(gateway, scenario)

    assert outstation.handler.operates == [
        (("AnalogOutputFloat32", 125.0), 3, "DirectOperate"),
        (("crob", "LATCH_ON", "NUL", 0, 0), 2, "SelectBeforeOperate"),
    ]
    assert outstation.handler.selects == [(("crob", "LATCH_ON", "NUL", 0, 0), 2)]
    assert analog_result.read_back == pytest.approx(12.5)
    assert binary_result.read_back == 1.0
    # The gateway's master was the only connection, and it stayed up through both writes.
    assert relay.accepted == 1
    assert supervised.driver is driver_before
    assert supervised.failures == 0
    for point, read_back in ((analog, 12.5), (binary, 1.0)):
        [entry] = setpoint_entries(point)
        assert entry.outcome == Outcome.SUCCESS
        assert entry.detail["read_back"] == pytest.approx(read_back)
        assert entry.detail["device_response"] == "SUCCESS (0)"
    assert f"Schema alpha device {device.pk} point {analog.pk} request " in caplog.text
    assert caplog.text.count(": setpoint request ok") == 2


def test_no_gateway_writes_in_own_session(alpha, outstation, relay, outputs, operator):
    analog, _binary = outputs

    result = write_setpoint(analog, -3.5, actor=operator)

    assert result.read_back == pytest.approx(-3.5)
    assert outstation.handler.operates == [(("AnalogOutputFloat32", -35.0), 3, "DirectOperate")]
    assert relay.accepted == 1
    [entry] = setpoint_entries(analog)
    assert entry.outcome == Outcome.SUCCESS


def test_silent_gateway_fails_and_audits(alpha, outstation, relay, outputs, operator, settings):
    # The advertisement of a gateway that stopped without withdrawing it, or hangs, lasts until it expires.
    settings.PROTOCOLS_GATEWAY_REPLY_MARGIN_SECONDS = 0.5
    analog, _binary = outputs
    get_client().set(advertisement_key("alpha", analog.device_id), "silent-gateway", ex=30)

    started = time.monotonic()
    with pytest.raises(SetpointError) as raised:
        write_setpoint(analog, 7.0, actor=operator)
    waited = time.monotonic() - started

    message = str(raised.value)
    assert f"Setpoint 7.0 for point {analog.pk} is unconfirmed" in message
    assert f"Gateway silent-gateway, which holds the connection to device {analog.device_id}" in message
    assert "did not reply within 5.5 s" in message
    assert "check that run_gateway is running" in message
    assert 5.5 <= waited < 8
    [entry] = setpoint_entries(analog)
    assert entry.outcome == Outcome.FAILURE
    assert "did not reply within 5.5 s" in entry.detail["error"]
    # Routed to the gateway, the write opened no connection of its own.
    assert relay.accepted == 0
    assert outstation.handler.operates == []
    # The unread request expires with the gateway's command list within a second after the caller gave up.
    assert get_client().ttl(command_key("silent-gateway")) <= 1


def send_request(gateway_id, request):
    """Push a raw request to the gateway's command list and return its reply, or None after 4 s."""
    client = get_client()
    client.rpush(command_key(gateway_id), json.dumps(request))
    reply = client.blpop([reply_key(request["id"])], timeout=4)
    return None if reply is None else json.loads(reply[1])


def raw_request(point, schema, **changes):
    """Return a request as write_setpoint sends it; ``changes`` replace point fields or request keys."""
    fields = {
        "pk": point.pk, "sensor_id": point.sensor_id, "dnp3_type": point.dnp3_type, "dnp3_index": point.dnp3_index,
        "data_type": point.data_type, "scale": point.scale, "offset": point.offset,
        "dnp3_operate_mode": point.dnp3_operate_mode, "dnp3_control": point.dnp3_control,
        "dnp3_on_time_ms": point.dnp3_on_time_ms, "dnp3_off_time_ms": point.dnp3_off_time_ms,
    }
    request = {"id": uuid.uuid4().hex, "schema": schema, "device": point.device_id, "point": fields,
               "value": 5.0, "connection": connection_digest(point.device), "deadline": time.time() + 10}
    for name, value in changes.items():
        if name in fields:
            fields[name] = value
        else:
            request[name] = value
    return request


def test_gateway_skips_devices_not_held(alpha, beta, outstation, relay, outputs, caplog):
    analog, _binary = outputs
    gateway = fast_gateway()
    caplog.set_level(logging.INFO, logger="apps.protocols.gateway_commands")
    # Built here, because connection_digest reads the database, which the gateway's event loop must not.
    requests = {
        "other schema": raw_request(analog, "beta"),
        "other index": raw_request(analog, "alpha", dnp3_index=4),
        "other sensor": raw_request(analog, "alpha", sensor_id=analog.sensor_id + 1000),
        "unknown point": raw_request(analog, "alpha", pk=analog.pk + 1000),
        "no digest": raw_request(analog, "alpha", connection=None),
        "other digest": raw_request(analog, "alpha", connection="0" * 64),
    }

    async def scenario():
        await connected(gateway, 1)
        gateway_id = await advertised("alpha", analog.device_id)
        replies = {name: await asyncio.to_thread(send_request, gateway_id, request) for name, request in requests.items()}
        return gateway_id, requests, replies

    gateway_id, requests, replies = run_gateway_during(gateway, scenario)

    assert replies["other schema"]["outcome"] == "not_held"
    assert replies["other schema"]["message"] == (
        f"Gateway {gateway_id} holds no connection to device {analog.device_id} in schema beta. "
        "Check that the device is enabled, then write again."
    )
    for name in ("other index", "other sensor", "unknown point"):
        assert replies[name]["outcome"] == "not_held", name
        assert "with this sensor, type and index" in replies[name]["message"], name
    for name in ("no digest", "other digest"):
        assert replies[name]["outcome"] == "stale", name
        assert f"has not loaded the current connection settings of device {analog.device_id}" in \
            replies[name]["message"], name
    assert outstation.handler.selects == []
    assert outstation.handler.operates == []
    assert f"Schema beta device {analog.device_id} point {analog.pk} request {requests['other schema']['id']}: " \
           "setpoint request not_held" in caplog.text


def test_gateway_withdraws_advertisement_on_stop(alpha, outstation, relay, outputs):
    analog, _binary = outputs
    gateway = fast_gateway()

    async def scenario():
        await connected(gateway, 1)
        return await advertised("alpha", analog.device_id)

    gateway_id = run_gateway_during(gateway, scenario)

    assert gateway_id == gateway.commands.gateway_id
    assert get_client().get(advertisement_key("alpha", analog.device_id)) is None


def test_slow_outstation_delays_only_its_device(alpha, outstation, relay, outputs, operator):
    analog, _binary = outputs
    slow_outstation = CommandOutstation(port=free_port_in(OUTSTATION_PORTS))
    slow_outstation.set_outputs(analog=[(0, 0.0)])
    slow_outstation.handler.operate_delay = 2.0
    slow = PointFactory(
        device=DeviceFactory(protocol="dnp3", port=slow_outstation.port, timeout=3.0,
                             dnp3_master_address=MASTER_ADDRESS, dnp3_outstation_address=OUTSTATION_ADDRESS),
        sensor=SensorFactory(minimum=0, maximum=100), register_type="holding", address=None,
        dnp3_type="analog_output_status", dnp3_index=0, data_type="float32", dnp3_operate_mode="direct_operate",
    )
    gateway = fast_gateway()
    slow_request = raw_request(slow, "alpha")

    async def scenario():
        await connected(gateway, 2)
        gateway_id = await advertised("alpha", slow.device_id)
        await advertised("alpha", analog.device_id)
        slow_reply = asyncio.create_task(asyncio.to_thread(send_request, gateway_id, slow_request))
        # Give the gateway time to start the slow operate.
        await asyncio.sleep(0.5)
        started = time.monotonic()
        result = await sync_to_async(write_setpoint, thread_sensitive=True)(analog, 4.0, actor=operator)
        fast_seconds = time.monotonic() - started
        fast_finished_first = not slow_reply.done()
        return result, fast_seconds, fast_finished_first, await slow_reply

    try:
        result, fast_seconds, fast_finished_first, slow_reply = run_gateway_during(gateway, scenario)
    finally:
        slow_outstation.stop()

    assert result.read_back == pytest.approx(4.0)
    assert fast_finished_first
    assert fast_seconds < 1.5
    assert slow_reply["outcome"] == "ok"
    assert slow_reply["read_back"]["value"] == pytest.approx(5.0)
    assert slow_outstation.handler.operates == [(("AnalogOutputFloat32", 5.0), 0, "DirectOperate")]


def test_lost_connection_fails_without_session(alpha, outstation, relay, outputs, operator):
    analog, _binary = outputs
    gateway = fast_gateway()

    async def scenario():
        await connected(gateway, 1)
        await advertised("alpha", analog.device_id)
        supervised = gateway.connections[("alpha", analog.device_id)]
        relay.break_link()
        async with asyncio.timeout(10):
            while supervised.driver is not None and supervised.driver.connected:
                await asyncio.sleep(0.02)
        with pytest.raises(SetpointError) as raised:
            await sync_to_async(write_setpoint, thread_sensitive=True)(analog, 2.0, actor=operator)
        return raised.value

    error = run_gateway_during(gateway, scenario)

    assert f"Setpoint 2.0 for point {analog.pk} was not written" in str(error)
    assert f"The gateway's connection to device {analog.device_id} is down and reconnecting" in str(error)
    assert outstation.handler.operates == []
    [entry] = setpoint_entries(analog)
    assert entry.outcome == Outcome.FAILURE


def test_repointed_device_write_is_stale(alpha, outstation, relay, outputs, operator):
    analog, _binary = outputs
    device = analog.device
    new_outstation = CommandOutstation(port=free_port_in(OUTSTATION_PORTS))
    new_outstation.set_outputs(analog=[(index, 0.0) for index in range(5)])
    # reload_interval is 60 s, so a connection to the new port before then comes from the early reload.
    gateway = fast_gateway()
    write = sync_to_async(write_setpoint, thread_sensitive=True)

    async def scenario():
        await connected(gateway, 1)
        await advertised("alpha", device.pk)
        # A queryset update, as an admin save or API PATCH stores it, without a restart of the gateway.
        await sync_to_async(Device.objects.filter(pk=device.pk).update, thread_sensitive=True)(port=new_outstation.port)
        repointed = await sync_to_async(Point.objects.select_related("device").get, thread_sensitive=True)(pk=analog.pk)
        with pytest.raises(SetpointError) as raised:
            await write(repointed, 9.5, actor=operator)
        old_operates_after_stale = list(outstation.handler.operates)

        async with asyncio.timeout(15):
            while True:
                supervised = gateway.connections.get(("alpha", device.pk))
                if supervised and supervised.spec.device.port == new_outstation.port and supervised.driver \
                        and supervised.driver.connected:
                    break
                await asyncio.sleep(0.02)
        result = await write(repointed, 9.5, actor=operator)
        return raised.value, old_operates_after_stale, result

    try:
        error, old_operates_after_stale, result = run_gateway_during(gateway, scenario)
    finally:
        new_outstation.stop()

    message = str(error)
    assert f"Setpoint 9.5 for point {analog.pk} was not written" in message
    assert f"has not loaded the current connection settings of device {device.pk}" in message
    assert "It reloads every 60 s (run_gateway --reload) and was asked to reload now" in message
    assert old_operates_after_stale == []
    assert outstation.handler.operates == []
    assert new_outstation.handler.operates == [(("AnalogOutputFloat32", 95.0), 3, "DirectOperate")]
    assert result.read_back == pytest.approx(9.5)
    stale_entry, written_entry = sorted(setpoint_entries(analog), key=lambda entry: entry.pk)
    assert stale_entry.outcome == Outcome.FAILURE
    assert "has not loaded the current connection settings" in stale_entry.detail["error"]
    assert stale_entry.detail["written"] is None
    assert written_entry.outcome == Outcome.SUCCESS


@pytest.mark.parametrize("advertisement", [b"\xff\xfegateway", b"", b"two words", b"tab\tgateway"])
def test_malformed_advertisement_fails_and_audits(alpha, outstation, relay, outputs, operator, advertisement):
    analog, _binary = outputs
    key = advertisement_key("alpha", analog.device_id)
    get_client().set(key, advertisement, ex=30)

    with pytest.raises(SetpointError) as raised:
        write_setpoint(analog, 7.0, actor=operator)

    message = str(raised.value)
    assert f"Setpoint 7.0 for point {analog.pk} was not written" in message
    assert f"The Redis key {key} contains {advertisement!r}, which is not a gateway id" in message
    assert f"redis-cli DEL {key}" in message
    assert "cannot be encoded" not in message
    [entry] = setpoint_entries(analog)
    assert entry.outcome == Outcome.FAILURE
    assert "which is not a gateway id" in entry.detail["error"]
    # A malformed advertisement may still belong to a running gateway, so the write opens no session of its own.
    assert relay.accepted == 0
    assert outstation.handler.operates == []


def reply_once(gateway_id, reply_payload):
    """Pop one request from the gateway's command list, push ``reply_payload`` (str) as its reply and return the request."""
    client = get_client()
    popped = client.blpop([command_key(gateway_id)], timeout=10)
    assert popped is not None, f"no request reached {command_key(gateway_id)} within 10 s"
    request = json.loads(popped[1])
    client.lpush(reply_key(request["id"]), reply_payload)
    return request


OK_REPLY = {
    "outcome": "ok", "previous": 0.0, "written": 70.0, "expected": 70.0,
    "read_back": {"value": 7.0, "quality": 0, "time": "2026-01-01T00:00:00+00:00"},
    "write_response": "SUCCESS (0)", "point_error": None,
}


def _without(mapping, name):
    return {key: value for key, value in mapping.items() if key != name}


@pytest.mark.parametrize(("payload", "reason"), [
    (json.dumps(_without(OK_REPLY, "read_back")), "read_back is missing"),
    (json.dumps(_without(OK_REPLY, "expected")), "expected is missing"),
    (json.dumps({**OK_REPLY, "expected": "70"}), 'expected is "70", of the wrong type'),
    (json.dumps({**OK_REPLY, "read_back": {**OK_REPLY["read_back"], "time": "yesterday"}}),
     "read_back.time 'yesterday' is not an ISO 8601 time"),
    (json.dumps({**OK_REPLY, "read_back": {**OK_REPLY["read_back"], "time": "2026-01-01T00:00:00"}}),
     "read_back.time '2026-01-01T00:00:00' has no UTC offset"),
    (json.dumps({**OK_REPLY, "read_back": _without(OK_REPLY["read_back"], "quality")}), "read_back.quality is missing"),
    (json.dumps({**OK_REPLY, "read_back": [7.0]}), "read_back is [7.0], of the wrong type"),
    (json.dumps(["ok"]), "the reply is a JSON list, not an object"),
    ("{not json", "Expecting property name"),
])
def test_malformed_reply_is_unconfirmed(alpha, outstation, relay, outputs, operator, payload, reason):
    analog, _binary = outputs
    get_client().set(advertisement_key("alpha", analog.device_id), "fake-gateway", ex=30)

    with ThreadPoolExecutor(max_workers=1) as executor:
        fake_gateway = executor.submit(reply_once, "fake-gateway", payload)
        with pytest.raises(SetpointError) as raised:
            write_setpoint(analog, 7.0, actor=operator)
        request = fake_gateway.result()

    message = str(raised.value)
    assert f"Setpoint 7.0 for point {analog.pk} is unconfirmed" in message
    assert f"The reply of gateway fake-gateway to request {request['id']} was malformed (" in message
    assert reason in message
    assert "read the device's value before writing again" in message
    [entry] = setpoint_entries(analog)
    assert entry.outcome == Outcome.FAILURE
    assert reason in entry.detail["error"]
    assert relay.accepted == 0
    assert outstation.handler.operates == []


def test_stop_interrupts_request_unconfirmed(alpha, outstation, relay, outputs, monkeypatch, caplog):
    analog, _binary = outputs
    # The operate outlasts the stop's wait for requests in progress, so the stop interrupts it.
    outstation.handler.operate_delay = 2.0
    monkeypatch.setattr(gateway_commands, "STOP_WAIT_SECONDS", 0.3)
    gateway = fast_gateway()
    request = raw_request(analog, "alpha")
    caplog.set_level(logging.INFO, logger="apps.protocols.gateway_commands")

    async def scenario():
        await connected(gateway, 1)
        gateway_id = await advertised("alpha", analog.device_id)
        reply = executor.submit(send_request, gateway_id, request)
        while "setpoint request received" not in caplog.text:
            await asyncio.sleep(0.02)
        return gateway_id, reply, time.monotonic()

    with ThreadPoolExecutor(max_workers=1) as executor:
        gateway_id, reply_future, stop_requested = run_gateway_during(gateway, scenario)
        reply = reply_future.result()
        replied = time.monotonic()

    assert reply is not None, "the interrupted request got no reply within 4 s"
    assert reply["outcome"] == "unconfirmed"
    assert reply["message"] == (
        f"Gateway {gateway_id} stopped while it ran request {request['id']}. The write may have reached "
        "the device: read the device's value before writing again."
    )
    # The reply came with the stop, long before the request's deadline of 10 s.
    assert replied - stop_requested < 3
    assert f"request {request['id']}: setpoint request interrupted by the gateway's stop" in caplog.text


def test_stop_keeps_advertisement_until_closed(alpha, outstation, relay, outputs, monkeypatch):
    analog, _binary = outputs
    gateway = fast_gateway()
    advertisement = advertisement_key("alpha", analog.device_id)
    seen_while_closing = []
    queued = raw_request(analog, "alpha")
    stop_connection = SupervisedConnection.stop

    async def stop_after_a_late_request(self):
        # A caller that found the advertisement during the stop pushes a request that the gateway no longer reads.
        seen_while_closing.append(await asyncio.to_thread(get_client().get, advertisement))
        await asyncio.to_thread(get_client().rpush, command_key(gateway.commands.gateway_id), json.dumps(queued))
        await stop_connection(self)

    monkeypatch.setattr(SupervisedConnection, "stop", stop_after_a_late_request)

    async def scenario():
        await connected(gateway, 1)
        return await advertised("alpha", analog.device_id)

    gateway_id = run_gateway_during(gateway, scenario)
    reply = get_client().blpop([reply_key(queued["id"])], timeout=1)

    # The gateway's master was still connected, so callers had to keep routing to it.
    assert seen_while_closing == [gateway_id.encode()]
    assert get_client().get(advertisement) is None
    assert reply is not None, "the request left in the command list got no reply"
    answer = json.loads(reply[1])
    assert answer["outcome"] == "stopping"
    assert f"Gateway {gateway_id} stopped before it ran request {queued['id']}, so nothing was written" \
        in answer["message"]
    assert outstation.handler.operates == []
    assert get_client().llen(command_key(gateway_id)) == 0


def test_second_gateway_is_reported(alpha, outstation, relay, outputs, caplog):
    analog, _binary = outputs
    gateway = fast_gateway()
    advertisement = advertisement_key("alpha", analog.device_id)
    # Left by a gateway that crashed: its key lives on until it expires, and is no sign of a second gateway.
    get_client().set(advertisement, "crashed-gateway", ex=30)

    async def scenario():
        await connected(gateway, 1)
        while (await asyncio.to_thread(get_client().get, advertisement)) != gateway.commands.gateway_id.encode():
            await asyncio.sleep(0.02)
        # Another run_gateway on the same database advertises the device between two heartbeats, twice.
        for _ in range(2):
            await asyncio.to_thread(get_client().set, advertisement, "other-gateway", ex=30)
            while (await asyncio.to_thread(get_client().get, advertisement)) == b"other-gateway":
                await asyncio.sleep(0.02)

    run_gateway_during(gateway, scenario)

    warning = (
        f"Gateway {gateway.commands.gateway_id}: schema alpha device {analog.device_id} is also held by gateway "
        "other-gateway, so two DNP3 masters compete for one outstation. Run one run_gateway per database."
    )
    assert caplog.text.count(warning) == 1
    assert "crashed-gateway" not in caplog.text


def test_slow_operate_through_gateway_unconfirmed(alpha, outstation, relay, outputs, operator):
    analog, _binary = outputs
    # The outputs' device timeout is 1 s, so the gateway's master gives up before the outstation responds.
    outstation.handler.operate_delay = 3.0
    gateway = fast_gateway()

    async def scenario():
        await connected(gateway, 1)
        await advertised("alpha", analog.device_id)
        with pytest.raises(SetpointError) as raised:
            await sync_to_async(write_setpoint, thread_sensitive=True)(analog, 4.2, actor=operator)
        return raised.value

    error = run_gateway_during(gateway, scenario)

    message = str(error)
    assert f"Setpoint 4.2 for point {analog.pk} is unconfirmed" in message
    assert "FAILURE_RESPONSE_TIMEOUT" in message
    [entry] = setpoint_entries(analog)
    assert entry.outcome == Outcome.FAILURE
    assert "is unconfirmed" in entry.detail["error"]
    # Only the gateway's master was connected.
    assert relay.accepted == 1
