"""A client that stops reading, under uvicorn, the server of the demo and the image.

uvicorn's WebSocket send (websockets-sansio and wsproto protocols, uvicorn
0.54) waits while the transport's write buffer is above its high-water mark,
so a stalled client makes the consumer's outbox fill, and the consumer drops
its messages and closes it with 4409. A smaller flood stays in the buffers
and reaches the client once it reads again. Daphne 4.2 buffers without
bound, so these tests run on uvicorn only.
"""

import asyncio
import json
import socket
import time

import pytest
import websockets
from asgiref.sync import sync_to_async
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
from apps.dashboards.push import dropped_messages
from tests.conftest import SOCKET_TIMEOUT, TENANT_DOMAINS, access_token_for, admin_of, free_port_in
from tests.dashboards.test_daphne_close_codes import running_server

pytestmark = pytest.mark.slow

PORT_RANGE = range(23000, 23100)
# Alarm transitions sent in one flood. About 150 of them (some 100 KB) fit in
# uvicorn's 64 KiB write buffer and the small kernel buffers below, and 100
# more fill the consumer's outbox, so 300 are needed before the close.
TRANSITIONS = 300
# A flood that the buffers and the outbox take whole.
SMALL_FLOOD = 150
# Receive buffer of the stalled client's socket, in bytes; Linux doubles it.
STALLED_RECEIVE_BUFFER = 8192
ETHERNET_MSS = 1460
# Kernel send buffer of the server's connections, in bytes; Linux doubles it.
SERVER_SEND_BUFFER = 4096
# Maximum time the sender may take for all transitions; it must not wait for the stalled client.
MAX_SENDING_SECONDS = 10


@pytest.fixture(scope="module")
def uvicorn_port(django_db_setup, tmp_path_factory):
    """Run uvicorn on a listening socket whose accepted connections have a small kernel send buffer.

    Linux copies SO_SNDBUF from the listening socket to the connections it
    accepts, and a fixed size turns off send-buffer autotuning. Left at the
    default, the kernel buffers up to net.ipv4.tcp_wmem's maximum (4 MiB by
    default) for a stalled client before uvicorn's send waits.
    """
    port = free_port_in(PORT_RANGE)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SERVER_SEND_BUFFER)
    listener.bind(("127.0.0.1", port))
    listener.listen()
    log_path = tmp_path_factory.mktemp("uvicorn") / "uvicorn.log"
    try:
        with running_server("uvicorn", port, log_path, listening_socket=listener):
            yield port
    finally:
        listener.close()


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
            if data:
                await asyncio.get_running_loop().sock_sendall(self.socket, data)

    def close(self):
        self.socket.close()


async def _receive(client, count):
    return [json.loads(await asyncio.wait_for(client.recv(), timeout=SOCKET_TIMEOUT)) for _ in range(count)]


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
        try:
            async with _connect(uvicorn_port, token, query, max_queue=None) as healthy:
                payloads = await sync_to_async(_toggle_payloads)(alarm.pk, SMALL_FLOOD)
                await sync_to_async(send_alarm_updates, thread_sensitive=False)("alpha", payloads)
                await _receive(healthy, SMALL_FLOOD)
                delivered = await stalled.receive_count(SMALL_FLOOD)
        finally:
            stalled.close()

    assert [message["seq"] for message in delivered] == list(range(1, SMALL_FLOOD + 1))
    assert stalled.close_code is None
