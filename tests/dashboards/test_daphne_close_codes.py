"""Close codes of refused WebSockets as a client sees them through real ASGI servers.

The channels test communicator reports a close before the accept as a close
code, but Daphne and uvicorn turn it into an HTTP 403 of the handshake. Only
a real server shows whether a refused client gets the documented code. Every
test runs against uvicorn, the server of the demo and the image, and Daphne,
which ``manage.py runserver`` uses.
"""
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context

from apps.accounts.choices import Role
from tests.conftest import TENANT_DOMAINS, access_token_for, free_port_in
from tests.dashboards.test_socket_credentials import committed  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Ports this test may bind, so that parallel suites on one machine do not collide.
PORT_RANGE = range(22600, 22700)
STARTUP_TIMEOUT_SECONDS = 30
# WebSocket keepalive of uvicorn in seconds, as in Procfile.demo and the image.
UVICORN_PING_INTERVAL_SECONDS = 10
UVICORN_PING_TIMEOUT_SECONDS = 10
# Command line of each server, without the port; the same options as Procfile.demo for uvicorn.
SERVER_COMMANDS = {
    "daphne": [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "thermacore.asgi:application", "-p"],
    "uvicorn": [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--ws", "websockets-sansio",
                "--ws-ping-interval", str(UVICORN_PING_INTERVAL_SECONDS),
                "--ws-ping-timeout", str(UVICORN_PING_TIMEOUT_SECONDS),
                "--lifespan", "off", "thermacore.asgi:application", "--port"],
}


def _free_port_in_range():
    return free_port_in(PORT_RANGE)


def _wait_for_port(port, process, log_path, server):
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{server} exited with {process.returncode} before listening on port {port}; see {log_path}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{server} did not listen on port {port} within {STARTUP_TIMEOUT_SECONDS} s")


@contextlib.contextmanager
def running_server(server, port, log_path, listening_socket=None, options=(), environment=None):
    """Run ``server`` (a key of SERVER_COMMANDS) on the test database and this suite's Redis database.

    With ``listening_socket`` (uvicorn only), the server accepts on that
    bound socket instead of binding ``port`` itself. ``options`` go on the
    command line after those of SERVER_COMMANDS, which they override, and
    ``environment`` adds variables, such as THERMACORE_* settings.
    """
    database = connection.settings_dict
    database_url = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "thermacore.settings_test",
        "THERMACORE_DATABASE_URL": database_url,
        "THERMACORE_REDIS_URL": settings.REDIS_URL,
        **(environment or {}),
    }
    log = log_path.open("wb")
    *base_command, port_option = SERVER_COMMANDS[server]
    command = [*base_command, *options, port_option, str(port)]
    inherited = ()
    if listening_socket is not None:
        inherited = (listening_socket.fileno(),)
        command = [*base_command, *options, "--fd", str(listening_socket.fileno())]
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, pass_fds=inherited,
    )
    try:
        _wait_for_port(port, process, log_path, server)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module", params=sorted(SERVER_COMMANDS))
def server_port(request, django_db_setup, tmp_path_factory):
    """Run each server in turn; yield its port."""
    log_path = tmp_path_factory.mktemp(request.param) / f"{request.param}.log"
    with running_server(request.param, _free_port_in_range(), log_path) as port:
        yield port


async def _close_code(port, host, headers=()):
    """Open ``/ws/live/`` on the server at ``port`` with ``host`` as Host header and return the close code."""
    uri = f"ws://{host}:{port}/ws/live/?format=json"
    # host= and port= send the TCP connection to loopback whatever the URI's host name resolves to.
    async with websockets.connect(
        uri, additional_headers=list(headers), host="127.0.0.1", port=port, proxy=None, open_timeout=15
    ) as client:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(client.recv(), timeout=15)
        return client.close_code


@pytest.mark.asyncio
async def test_anonymous_socket_closes_4401(server_port):
    code = await _close_code(server_port, TENANT_DOMAINS["alpha"])

    assert code == 4401


@pytest.mark.asyncio
async def test_bad_token_closes_4401(server_port):
    code = await _close_code(server_port, TENANT_DOMAINS["alpha"], [("Authorization", "Bearer not-a-token")])

    assert code == 4401


@pytest.mark.asyncio
async def test_auditor_socket_closes_4403(server_port, committed):
    auditor = await sync_to_async(committed.user)(Role.AUDITOR)
    token = await sync_to_async(access_token_for)("alpha", auditor)

    code = await _close_code(server_port, TENANT_DOMAINS["alpha"], [("Authorization", f"Bearer {token}")])

    assert code == 4403


@pytest.mark.asyncio
async def test_unknown_host_closes_4404(server_port):
    code = await _close_code(server_port, "nobody.localhost")

    assert code == 4404


@pytest.mark.asyncio
async def test_unknown_path_closes_4401_for_strangers(server_port):
    uri = f"ws://{TENANT_DOMAINS['alpha']}:{server_port}/ws/nothing/"
    async with websockets.connect(uri, host="127.0.0.1", port=server_port, proxy=None, open_timeout=15) as client:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(client.recv(), timeout=15)

    assert client.close_code == 4401


def _session_cookie(user):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    with schema_context("alpha"):
        client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


async def _session_headers(factory, origin):
    viewer = await sync_to_async(factory.user)(Role.VIEWER)
    cookie = await sync_to_async(_session_cookie)(viewer)
    return [("Cookie", cookie), ("Origin", origin)]


@pytest.mark.asyncio
async def test_session_from_other_origin_closes_4401(server_port, committed):
    headers = await _session_headers(committed, "http://evil.localhost")

    code = await _close_code(server_port, TENANT_DOMAINS["alpha"], headers)

    assert code == 4401


@pytest.mark.asyncio
async def test_session_from_own_origin_stays_open(server_port, committed):
    host = TENANT_DOMAINS["alpha"]
    headers = await _session_headers(committed, f"http://{host}:{server_port}")
    uri = f"ws://{host}:{server_port}/ws/live/?format=json"

    async with websockets.connect(
        uri, additional_headers=headers, host="127.0.0.1", port=server_port, proxy=None, open_timeout=15
    ) as client:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.recv(), timeout=0.5)
        close_code = client.close_code

    assert close_code is None
