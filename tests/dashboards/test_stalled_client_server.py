"""A client that stops reading, under uvicorn, the server of the demo and the image.

uvicorn's WebSocket send (websockets-sansio and wsproto protocols, uvicorn
0.54) waits while the transport's write buffer is above its high-water mark,
so a stalled client makes the consumer's outbox fill, and the consumer drops
its messages and closes it with 4409. A smaller flood stays in the buffers
and reaches the client once it reads again, unless the client read nothing
for longer than uvicorn's keepalive window: then uvicorn closes it with
1011 and the consumer drops what it had not handed over and ends. Daphne
4.2 buffers without bound, so these tests run on uvicorn only.
"""

import asyncio
import contextlib
import dataclasses
import json
import re
import socket
import struct
import time

import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.utils.timezone import now as server_now
from django_tenants.utils import schema_context
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from apps.alarms.choices import AlarmState
from apps.alarms.models import Alarm
from apps.alarms.push import alarm_payload, send_alarm_updates
from apps.dashboards.consumers import CLOSE_RESYNC, OUTBOX_LIMIT
from apps.dashboards.groups import unit_group
from apps.dashboards.push import dropped_messages
from apps.telemetry import latest
from tests.conftest import SOCKET_TIMEOUT, TENANT_DOMAINS, access_token_for, admin_of, free_port_in
from tests.dashboards.test_daphne_close_codes import UVICORN_PING_TIMEOUT_SECONDS, running_server

pytestmark = pytest.mark.slow

PORT_RANGE = range(23000, 23100)
# Alarm transitions sent in one flood. About 150 of them (some 100 KB) fit in
# uvicorn's 64 KiB write buffer and the small kernel buffers below, and 100
# more fill the consumer's outbox, so 300 are needed before the close.
TRANSITIONS = 300
# A flood that the buffers and the outbox take whole.
SMALL_FLOOD = 150
# A flood that makes uvicorn's send wait but leaves the outbox below OUTBOX_LIMIT. With the buffer
# sizes below, 155 or 156 transitions fitted in the buffers in test runs, so about 45 wait in the outbox.
BLOCKING_FLOOD = 200
# Receive buffer of the stalled client's socket, in bytes; Linux doubles it.
STALLED_RECEIVE_BUFFER = 8192
ETHERNET_MSS = 1460
# Kernel send buffer of the server's connections, in bytes; Linux doubles it.
SERVER_SEND_BUFFER = 4096
# Maximum time the sender may take for all transitions; it must not wait for the stalled client.
MAX_SENDING_SECONDS = 10
# Keepalive of the short-keepalive server, in seconds: a ping every second, and its pong must arrive within one.
SHORT_PING_SECONDS = 1
# A client that reads nothing for longer than this is closed by that server's keepalive.
KEEPALIVE_WINDOW_SECONDS = 2 * SHORT_PING_SECONDS
# LIVE_SEND_TIMEOUT_SECONDS of that server. It is longer than the keepalive window, as in
# production, so uvicorn closes the stalled client first.
SHORT_SEND_TIMEOUT_SECONDS = 6
# Close code of uvicorn's keepalive when a ping gets no pong in time (1011, internal error).
KEEPALIVE_CLOSE_CODE = 1011
# Seconds between two looks at a socket or at Redis while a test waits for something.
POLL_SECONDS = 0.05
# Seconds a consumer gets to take a flood from the channel layer after the other client received all of it.
CATCH_UP_SECONDS = 1
# Log line of a consumer that ended with messages still queued (apps.dashboards.consumers).
DROPPED_LINE = re.compile(r"Live socket of user \d+ on schema \w+ .*?; dropped (\d+) (?:queued )?messages")


@contextlib.contextmanager
def _small_buffer_uvicorn(log_path, options=(), environment=None):
    port = free_port_in(PORT_RANGE)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SERVER_SEND_BUFFER)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    try:
        with running_server("uvicorn", port, log_path, listening_socket=listener, options=options,
                            environment=environment):
            yield port
    finally:
        listener.close()


@pytest.fixture(scope="module")
def uvicorn_server(django_db_setup, tmp_path_factory):
    """Run uvicorn on a listening socket whose accepted connections have a small kernel send buffer; yield port and log.

    Linux copies SO_SNDBUF from the listening socket to the connections it
    accepts, and a fixed size turns off send-buffer autotuning. Left at the
    default, the kernel buffers up to net.ipv4.tcp_wmem's maximum (4 MiB by
    default) for a stalled client before uvicorn's send waits. The keepalive
    is that of Procfile.demo.
    """
    log_path = tmp_path_factory.mktemp("uvicorn") / "uvicorn.log"
    with _small_buffer_uvicorn(log_path) as port:
        yield port, log_path


@pytest.fixture(scope="module")
def uvicorn_port(uvicorn_server):
    return uvicorn_server[0]


@pytest.fixture(scope="module")
def short_keepalive_port(django_db_setup, tmp_path_factory):
    """Run uvicorn as uvicorn_port does, with a keepalive window of 2 s and a send timeout of the consumer of 6 s."""
    options = ["--ws-ping-interval", str(SHORT_PING_SECONDS), "--ws-ping-timeout", str(SHORT_PING_SECONDS)]
    environment = {"THERMACORE_LIVE_SEND_TIMEOUT_SECONDS": str(SHORT_SEND_TIMEOUT_SECONDS)}
    log_path = tmp_path_factory.mktemp("uvicorn-keepalive") / "uvicorn.log"
    with _small_buffer_uvicorn(log_path, options, environment) as port:
        yield port


def _toggle_payloads(alarm_id, count):
    """Acknowledge and re-alarm the alarm ``count`` times; return the ``(unit id, payload)`` of each state.

    Only the last state is saved, because the test sends the payloads itself
    with send_alarm_updates, as the evaluator does after its commit.
    """
    payloads = []
    with schema_context("alpha"):
        alarm = Alarm.objects.select_related("rule", "acknowledged_by").get(pk=alarm_id)
        for _ in range(count):
            if alarm.state == AlarmState.ACTIVE_UNACKNOWLEDGED:
                alarm.state, alarm.acknowledged_at = AlarmState.ACTIVE_ACKNOWLEDGED, server_now()
            else:
                alarm.state, alarm.acknowledged_at = AlarmState.ACTIVE_UNACKNOWLEDGED, None
            payloads.append((alarm.unit_id, alarm_payload(alarm)))
        alarm.save(update_fields=["state", "acknowledged_at"])
    return payloads


def _open_alarms(unit_id):
    with schema_context("alpha"):
        alarms = Alarm.objects.open().filter(unit_id=unit_id).select_related("rule", "acknowledged_by").order_by("pk")
        return [alarm_payload(alarm) for alarm in alarms]


def _connect(port, token, query, **options):
    uri = f"ws://{TENANT_DOMAINS['alpha']}:{port}/ws/live/?{query}"
    # host= and port= send the TCP connection to loopback whatever the URI's host name resolves to.
    return websockets.connect(
        uri, additional_headers={"Authorization": f"Bearer {token}"}, proxy=None, open_timeout=SOCKET_TIMEOUT,
        host="127.0.0.1", port=port, **options,
    )


class StalledClient:
    """A WebSocket client on a raw socket with a tiny receive buffer, which reads only when the test calls it.

    websockets' sans-I/O protocol does the handshake and parses frames, so
    nothing reads the socket in the background as an asyncio client would.
    """

    def __init__(self, port, token, query):
        self.uri = f"ws://{TENANT_DOMAINS['alpha']}:{port}/ws/live/?{query}"
        self.port = port
        self.token = token
        self.protocol = ClientProtocol(parse_uri(self.uri), max_size=None)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Set before connecting, so that the advertised window stays small.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RECEIVE_BUFFER)
        # An Ethernet-sized segment: with loopback's 64 KiB MSS and a window this small, a client that
        # resumed reading once got no further data until uvicorn's ping timeout.
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, ETHERNET_MSS)
        self.socket.setblocking(False)

    async def connect(self):
        loop = asyncio.get_running_loop()
        await loop.sock_connect(self.socket, ("127.0.0.1", self.port))
        request = self.protocol.connect()
        request.headers["Authorization"] = f"Bearer {self.token}"
        self.protocol.send_request(request)
        await self._flush()
        while self.protocol.handshake_exc is None and self.protocol.state is State.CONNECTING:
            await self._read_once()
        assert self.protocol.handshake_exc is None, self.protocol.handshake_exc
        # The first event is the handshake response.
        self.protocol.events_received()

    async def receive_until_close(self):
        """Read until the server's close frame or the end of the connection; return the JSON messages."""
        messages = []
        while self.protocol.close_rcvd is None:
            if not await self._read_once():
                break
            for event in self.protocol.events_received():
                if event.opcode is Opcode.TEXT:
                    messages.append(json.loads(event.data))
            await self._flush()
        return messages

    async def receive_count(self, count):
        """Read until ``count`` JSON messages or a close frame arrived; return the messages."""
        messages = []
        while len(messages) < count and self.protocol.close_rcvd is None:
            if not await self._read_once():
                break
            for event in self.protocol.events_received():
                if event.opcode is Opcode.TEXT:
                    messages.append(json.loads(event.data))
            await self._flush()
        return messages

    async def answer_pings_until(self, stop):
        """Read and answer the server's pings until ``stop`` is set; return the JSON messages read meanwhile.

        It polls the socket instead of awaiting sock_recv, so that stopping never drops data already read.
        """
        messages = []
        while not stop.is_set():
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(POLL_SECONDS)
                continue
            if not data:
                self.protocol.receive_eof()
                break
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if event.opcode is Opcode.TEXT:
                    messages.append(json.loads(event.data))
            # The protocol queued a pong for each ping.
            await self._flush()
        return messages

    @property
    def close_code(self):
        return self.protocol.close_rcvd.code if self.protocol.close_rcvd is not None else None

    async def _read_once(self):
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.socket, 65536), SOCKET_TIMEOUT)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        return bool(data)

    async def _flush(self):
        for data in self.protocol.data_to_send():
            if not data:
                continue
            try:
                await asyncio.get_running_loop().sock_sendall(self.socket, data)
            except (BrokenPipeError, ConnectionResetError):
                # uvicorn's keepalive closes the socket right after its close frame, so the reply finds it closed.
                return

    def close(self):
        self.socket.close()

    def reset(self):
        """Drop the connection with a TCP reset, as a client that crashed or lost its network does."""
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.socket.close()


async def _receive(client, count):
    return [json.loads(await asyncio.wait_for(client.recv(), timeout=SOCKET_TIMEOUT)) for _ in range(count)]


def _group_members(group):
    """Return the channel names in ``group``; channels_redis 4.3 keeps a group as a Redis sorted set of them."""
    layer = get_channel_layer()
    members = latest.get_client().zrange(layer._group_key(group), 0, -1)
    return {member.decode() for member in members}


async def _wait_for_group_to_lose(group, channels, timeout):
    """Poll until none of ``channels`` is in ``group`` or ``timeout`` seconds passed; return the members then."""
    deadline = time.monotonic() + timeout
    while True:
        members = await sync_to_async(_group_members)(group)
        if not members & channels or time.monotonic() >= deadline:
            return members
        await asyncio.sleep(POLL_SECONDS)


async def _wait_for_dropped(schema, at_least, timeout):
    """Poll the tenant's dropped-message counter until it reaches ``at_least`` or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        dropped = await sync_to_async(dropped_messages)(schema)
        if dropped >= at_least or time.monotonic() >= deadline:
            return dropped
        await asyncio.sleep(POLL_SECONDS)


@pytest.mark.asyncio
async def test_uvicorn_closes_stalled_client_4409(uvicorn_port, committed_alarm, django_db_blocker):
    alarm = committed_alarm
    with django_db_blocker.unblock():
        token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
        query = f"unit={alarm.unit_id}&format=json"
        stalled = StalledClient(uvicorn_port, token, query)
        await stalled.connect()
        try:
            async with _connect(uvicorn_port, token, query, max_queue=None) as healthy:
                dropped_before = await sync_to_async(dropped_messages)("alpha")
                payloads = await sync_to_async(_toggle_payloads)(alarm.pk, TRANSITIONS)

                started = time.monotonic()
                await sync_to_async(send_alarm_updates, thread_sensitive=False)("alpha", payloads)
                sending_seconds = time.monotonic() - started

                received = await _receive(healthy, TRANSITIONS)
                # The stalled client reads again only after the other client has the whole flood, and
                # must find its close frame within the consumer's CLOSE_TIMEOUT_SECONDS.
                delivered = await stalled.receive_until_close()
                close_code = stalled.close_code
                dropped = await sync_to_async(dropped_messages)("alpha") - dropped_before
        finally:
            stalled.close()

        async with _connect(uvicorn_port, token, f"{query}&snapshot=1") as reconnected:
            snapshot = json.loads(await asyncio.wait_for(reconnected.recv(), timeout=SOCKET_TIMEOUT))
        server_alarms = await sync_to_async(_open_alarms)(alarm.unit_id)

    assert sending_seconds < MAX_SENDING_SECONDS
    assert [message["seq"] for message in received] == list(range(1, TRANSITIONS + 1))
    assert [message["alarm"]["state"] for message in received] == [payload["state"] for _, payload in payloads]
    assert close_code == CLOSE_RESYNC
    assert [message["seq"] for message in delivered] == list(range(1, len(delivered) + 1))
    assert len(delivered) < TRANSITIONS
    assert dropped >= OUTBOX_LIMIT
    assert len(delivered) + dropped <= TRANSITIONS
    assert snapshot["type"] == "alarms"
    assert snapshot["alarms"] == server_alarms
    assert snapshot["alarms"][0]["state"] == payloads[-1][1]["state"]


@pytest.mark.asyncio
async def test_uvicorn_resumed_client_gets_whole_flood(uvicorn_port, committed_alarm, django_db_blocker):
    alarm = committed_alarm
    with django_db_blocker.unblock():
        token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
        query = f"unit={alarm.unit_id}&format=json"
        stalled = StalledClient(uvicorn_port, token, query)
        await stalled.connect()
        paused_at = time.monotonic()
        try:
            async with _connect(uvicorn_port, token, query, max_queue=None) as healthy:
                payloads = await sync_to_async(_toggle_payloads)(alarm.pk, SMALL_FLOOD)
                await sync_to_async(send_alarm_updates, thread_sensitive=False)("alpha", payloads)
                await _receive(healthy, SMALL_FLOOD)
                paused_seconds = time.monotonic() - paused_at
                delivered = await stalled.receive_count(SMALL_FLOOD)
        finally:
            stalled.close()

    # A longer pause would let uvicorn's keepalive close the client, which another test covers.
    assert paused_seconds < UVICORN_PING_TIMEOUT_SECONDS
    assert [message["seq"] for message in delivered] == list(range(1, SMALL_FLOOD + 1))
    assert stalled.close_code is None



@dataclasses.dataclass
class StallOutcome:
    """What the clients of _stall_during_flood got, and what the server did with the stalled one."""

    payloads: list
    read_before_flood: list
    stalled_channels: set
    healthy_channels: set
    sending_seconds: float
    received: list
    members_after_stall: set
    stalled_seconds: float
    delivered: list
    close_code: int | None
    dropped: int
    snapshot: dict
    server_alarms: list


async def _stall_during_flood(port, alarm, flood, later_reading):
    """Flood two clients with ``flood`` alarm transitions while one of them has stopped reading.

    The stalled client answers pings until the flood starts and reads again
    only once its consumer left the unit's group. With ``later_reading``, a
    live value follows the flood once the keepalive window has passed, as
    the next change of a running plant would. Then it reconnects with a snapshot.
    """
    group = unit_group("alpha", alarm.unit_id)
    token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
    query = f"unit={alarm.unit_id}&format=json"
    stalled = StalledClient(port, token, query)
    await stalled.connect()
    stop_answering = asyncio.Event()
    answering = asyncio.create_task(stalled.answer_pings_until(stop_answering))
    try:
        stalled_channels = await sync_to_async(_group_members)(group)
        async with _connect(port, token, query, max_queue=None) as healthy:
            healthy_channels = await sync_to_async(_group_members)(group) - stalled_channels
            dropped_before = await sync_to_async(dropped_messages)("alpha")
            payloads = await sync_to_async(_toggle_payloads)(alarm.pk, flood)
            stop_answering.set()
            read_before_flood = await answering
            stalled_at = time.monotonic()

            started = time.monotonic()
            await sync_to_async(send_alarm_updates, thread_sensitive=False)("alpha", payloads)
            sending_seconds = time.monotonic() - started

            received = await _receive(healthy, flood)
            expected_drops = 0
            if later_reading:
                await asyncio.sleep(stalled_at + KEEPALIVE_WINDOW_SECONDS + 1 - time.monotonic())
                reading = {"sensor": alarm.sensor_id, "time": server_now().isoformat(), "value": 1.0, "quality": 0}
                await get_channel_layer().group_send(group, {"type": "readings.update", "readings": [reading]})
                received += await _receive(healthy, 1)
                expected_drops = 1
            members = await _wait_for_group_to_lose(group, stalled_channels, SHORT_SEND_TIMEOUT_SECONDS + SOCKET_TIMEOUT)
            stalled_seconds = time.monotonic() - stalled_at

            delivered = await stalled.receive_until_close()
            expected_drops += flood - len(delivered)
            dropped = await _wait_for_dropped("alpha", dropped_before + expected_drops, SOCKET_TIMEOUT) - dropped_before
    finally:
        answering.cancel()
        stalled.close()

    async with _connect(port, token, f"{query}&snapshot=1") as reconnected:
        snapshot = json.loads(await asyncio.wait_for(reconnected.recv(), timeout=SOCKET_TIMEOUT))
    server_alarms = await sync_to_async(_open_alarms)(alarm.unit_id)
    return StallOutcome(
        payloads=payloads, read_before_flood=read_before_flood, stalled_channels=stalled_channels,
        healthy_channels=healthy_channels, sending_seconds=sending_seconds, received=received,
        members_after_stall=members, stalled_seconds=stalled_seconds, delivered=delivered,
        close_code=stalled.close_code, dropped=dropped, snapshot=snapshot, server_alarms=server_alarms,
    )


@pytest.mark.asyncio
async def test_uvicorn_keepalive_closes_stalled_client(short_keepalive_port, committed_alarm, django_db_blocker):
    with django_db_blocker.unblock():
        outcome = await _stall_during_flood(short_keepalive_port, committed_alarm, SMALL_FLOOD, later_reading=True)

    payloads = outcome.payloads
    assert outcome.read_before_flood == []
    assert len(outcome.stalled_channels) == 1
    assert len(outcome.healthy_channels) == 1
    assert outcome.sending_seconds < MAX_SENDING_SECONDS
    alarms_received = [message for message in outcome.received if message["type"] == "alarm"]
    assert [message["seq"] for message in alarms_received] == list(range(1, SMALL_FLOOD + 1))
    assert [message["alarm"]["state"] for message in alarms_received] == [payload["state"] for _, payload in payloads]
    assert outcome.received[-1]["type"] == "readings"
    # The stalled client's consumer left the group before that client read again.
    assert not outcome.members_after_stall & outcome.stalled_channels
    assert outcome.healthy_channels <= outcome.members_after_stall
    assert outcome.stalled_seconds > KEEPALIVE_WINDOW_SECONDS
    assert outcome.close_code == KEEPALIVE_CLOSE_CODE
    assert [message["seq"] for message in outcome.delivered] == list(range(1, len(outcome.delivered) + 1))
    assert [message["alarm"]["state"] for message in outcome.delivered] == [
        payload["state"] for _, payload in payloads[: len(outcome.delivered)]
    ]
    # Every message reached the stalled client or was counted as dropped, the live value included.
    assert len(outcome.delivered) + outcome.dropped == SMALL_FLOOD + 1
    assert outcome.snapshot["type"] == "alarms"
    assert outcome.snapshot["alarms"] == outcome.server_alarms
    assert outcome.snapshot["alarms"][0]["state"] == payloads[-1][1]["state"]


@pytest.mark.asyncio
async def test_uvicorn_send_timeout_ends_blocked_consumer(short_keepalive_port, committed_alarm, django_db_blocker):
    with django_db_blocker.unblock():
        outcome = await _stall_during_flood(short_keepalive_port, committed_alarm, BLOCKING_FLOOD, later_reading=False)

    payloads = outcome.payloads
    assert outcome.read_before_flood == []
    assert outcome.sending_seconds < MAX_SENDING_SECONDS
    assert [message["seq"] for message in outcome.received] == list(range(1, BLOCKING_FLOOD + 1))
    assert [message["alarm"]["state"] for message in outcome.received] == [payload["state"] for _, payload in payloads]
    # With no further message to send, only the send timeout ends the consumer.
    assert not outcome.members_after_stall & outcome.stalled_channels
    assert outcome.healthy_channels <= outcome.members_after_stall
    assert outcome.stalled_seconds >= SHORT_SEND_TIMEOUT_SECONDS
    assert outcome.close_code == KEEPALIVE_CLOSE_CODE
    assert 0 < len(outcome.delivered) < BLOCKING_FLOOD
    assert [message["seq"] for message in outcome.delivered] == list(range(1, len(outcome.delivered) + 1))
    # The message in the send that timed out and those in the outbox are counted.
    assert outcome.dropped == BLOCKING_FLOOD - len(outcome.delivered)
    assert outcome.dropped <= OUTBOX_LIMIT
    assert outcome.snapshot["alarms"] == outcome.server_alarms
    assert outcome.snapshot["alarms"][0]["state"] == payloads[-1][1]["state"]


def _logged_drops(log_path, offset):
    """Return the counts of the "dropped N messages" lines that the server logged after byte ``offset``."""
    with log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", "replace")
    return [int(count) for count in DROPPED_LINE.findall(text)]


@pytest.mark.asyncio
async def test_uvicorn_reset_client_counts_queued(uvicorn_server, committed_alarm, django_db_blocker):
    uvicorn_port, log_path = uvicorn_server
    log_offset = log_path.stat().st_size
    alarm = committed_alarm
    group = unit_group("alpha", alarm.unit_id)
    with django_db_blocker.unblock():
        token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
        query = f"unit={alarm.unit_id}&format=json"
        stalled = StalledClient(uvicorn_port, token, query)
        await stalled.connect()
        paused_at = time.monotonic()
        try:
            stalled_channels = await sync_to_async(_group_members)(group)
            async with _connect(uvicorn_port, token, query, max_queue=None) as healthy:
                dropped_before = await sync_to_async(dropped_messages)("alpha")
                payloads = await sync_to_async(_toggle_payloads)(alarm.pk, BLOCKING_FLOOD)
                await sync_to_async(send_alarm_updates, thread_sensitive=False)("alpha", payloads)
                received = await _receive(healthy, BLOCKING_FLOOD)
                # Messages still waiting in the channel layer when the consumer ends are not counted, and the
                # stalled client's consumer may lag behind the healthy one's under load.
                await asyncio.sleep(CATCH_UP_SECONDS)
                paused_seconds = time.monotonic() - paused_at
                stalled.reset()
                members = await _wait_for_group_to_lose(group, stalled_channels, SOCKET_TIMEOUT)
                dropped = await _wait_for_dropped("alpha", dropped_before + 1, SOCKET_TIMEOUT) - dropped_before
        finally:
            stalled.close()

    # Before uvicorn's keepalive or the consumer's send timeout could end the stalled consumer.
    assert paused_seconds < UVICORN_PING_TIMEOUT_SECONDS
    assert [message["seq"] for message in received] == list(range(1, BLOCKING_FLOOD + 1))
    assert len(stalled_channels) == 1
    assert not members & stalled_channels
    # The flood stayed below the outbox limit, and the one consumer that ended counted its queue once,
    # either in the writer or in disconnect(), never in both.
    assert 1 <= dropped < OUTBOX_LIMIT
    assert _logged_drops(log_path, log_offset) == [dropped]
