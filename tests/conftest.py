"""Fixtures shared by the whole suite.

Two tenants, alpha and beta, are provisioned once per session in the test
database, each with its own schema and admin. Most tests run inside a
transaction that is rolled back; tests that need data visible to other
threads (WebSocket consumers, Celery tasks) use the committed fixtures.
"""

import asyncio
import faulthandler
import socket
import sys
import threading

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import setup_databases, teardown_databases
from django.utils.timezone import now as server_now
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

from apps.accounts.tokens import TenantTokenObtainPairSerializer
from apps.alarms.choices import AlarmState
from apps.alarms.models import Alarm, AlarmRule
from apps.telemetry import latest
from apps.tenants.models import Tenant
from apps.tenants.services import provision_tenant
from tests.factories import SensorFactory

# Seconds the interpreter gets to exit after the session. Python joins non-daemon threads at exit,
# so one hung event loop thread would otherwise keep CI waiting until its own time limit.
EXIT_TIMEOUT = 120

TENANT_DOMAINS = {"alpha": "alpha.localhost", "beta": "beta.localhost"}
ADMIN_PASSWORD = "Correct-horse-battery-4711"
# Seconds a test waits for a WebSocket message. Generous, because the consumer
# reaches the database from worker threads and CI machines may be loaded.
SOCKET_TIMEOUT = 15


async def refusal_code(communicator, timeout=SOCKET_TIMEOUT):
    """Return the close code of a refused WebSocket, which the server accepts and then closes at once."""
    connected, code = await communicator.connect(timeout=timeout)
    assert connected, f"handshake rejected (close code {code}); a refusal must accept and then close with a code"
    message = await communicator.receive_output(timeout=timeout)
    assert message["type"] == "websocket.close", message
    return message["code"]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    # Print every thread's stack and exit with status 1 when the exit hangs.
    faulthandler.dump_traceback_later(EXIT_TIMEOUT, exit=True, file=sys.__stderr__)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    # pytest-django creates the test database only when a selected test uses `db` or the django_db
    # mark. A run of committed-fixture tests alone would otherwise provision into the development database.
    created = None
    if connection.settings_dict["NAME"] != connection.creation._get_test_db_name():
        with django_db_blocker.unblock():
            created = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    with django_db_blocker.unblock():
        for schema, domain in TENANT_DOMAINS.items():
            provision_tenant(
                schema_name=schema, name=schema.title(), domain=domain,
                admin_username="admin", admin_password=ADMIN_PASSWORD,
            )
    latest.get_client().flushdb()
    yield
    # Consumers and sync_to_async threads keep connections of their own,
    # which would keep pytest-django from dropping the test database.
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    if created is not None:
        with django_db_blocker.unblock():
            teardown_databases(created, verbosity=0)


def _use_tenant(schema):
    tenant = Tenant.objects.get(schema_name=schema)
    connection.set_tenant(tenant)
    return tenant


@pytest.fixture
def alpha(db):
    """Tenant alpha, with the connection switched to its schema for the test."""
    tenant = _use_tenant("alpha")
    yield tenant
    connection.set_schema_to_public()


@pytest.fixture
def beta(db):
    tenant = Tenant.objects.get(schema_name="beta")
    yield tenant
    connection.set_schema_to_public()


@pytest.fixture(autouse=True)
def _clean_redis():
    yield
    latest.get_client().flushdb()


def admin_of(schema):
    from django.contrib.auth import get_user_model

    with schema_context(schema):
        return get_user_model().objects.get(username="admin")


def access_token_for(schema, user):
    with schema_context(schema):
        return str(TenantTokenObtainPairSerializer.get_token(user).access_token)


@pytest.fixture
def alpha_client(alpha):
    """Browser client on alpha's domain, logged in as alpha's admin."""
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(admin_of("alpha"))
    connection.set_tenant(alpha)
    return client


@pytest.fixture
def alpha_api(alpha):
    """API client on alpha's domain with a bearer token of alpha's admin."""
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', admin_of('alpha'))}")
    connection.set_tenant(alpha)
    return client


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_port_in(ports):
    """Return the first loopback port of ``ports`` that is free, so parallel suites can keep to their own ranges."""
    for port in ports:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"No free loopback port in {ports.start}-{ports.stop - 1}")


class ServerThread:
    """Runs an asyncio server coroutine in a thread of its own until stopped."""

    def __init__(self, coroutine_factory):
        self.coroutine_factory = coroutine_factory
        self.loop = asyncio.new_event_loop()
        self.ready = asyncio.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.coroutine_factory(self.ready))
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass

    def start(self, timeout=10):
        self.thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout * 20)):
            if self.loop.is_running() and self.ready.is_set():
                return self
            deadline.wait(0.05)
        raise RuntimeError("Server thread did not become ready in time")

    def stop(self):
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def plant_simulator():
    """The plant simulator serving Modbus TCP on a free loopback port; yields the port."""
    from apps.protocols.simulator.server import serve_plant

    port = free_port()
    server = ServerThread(
        lambda ready: serve_plant(host="127.0.0.1", port=port, update_interval=0.2, seed=7, ready=ready)
    ).start()
    yield port
    server.stop()


@pytest.fixture
def committed_alarm(django_db_setup, django_db_blocker):
    """An active, unacknowledged alarm of a HI rule in alpha, committed so that consumer threads see it."""
    with django_db_blocker.unblock(), schema_context("alpha"):
        sensor = SensorFactory()
        rule = AlarmRule.objects.create(sensor=sensor, condition="hi", limit=100.0)
        now = server_now()
        alarm = Alarm.objects.create(
            rule=rule,
            unit_id=sensor.unit_id,
            priority=rule.priority,
            message=rule.text,
            state=AlarmState.ACTIVE_UNACKNOWLEDGED,
            condition_started_at=now,
            activated_at=now,
        )
    yield alarm
    # A fresh schema context, because the test may leave the connection on another schema.
    with django_db_blocker.unblock(), schema_context("alpha"):
        Alarm.objects.filter(rule=rule).delete()
        rule.delete()
        unit = sensor.unit
        sensor.delete()
        unit.delete()
        unit.site.delete()
    connection.set_schema_to_public()
