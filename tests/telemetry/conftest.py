"""Fixtures of the telemetry fault tests: committed sensors and a private Redis for the spool."""

import shutil
import subprocess
import time

import pytest
import redis
from django.db import connection
from django_tenants.utils import schema_context

from apps.telemetry import spool
from tests.conftest import free_port
from tests.factories import SensorFactory


class RedisServer:
    """A redis-server on a free loopback port with the append-only file fsynced on every write."""

    def __init__(self, directory):
        self.directory = directory
        self.port = free_port()
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen(
            [shutil.which("redis-server"), "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within 5 s")

    def kill(self):
        """Stop the server without a shutdown save, as a crash or a restart by the host would."""
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def spool_redis(tmp_path, settings):
    """A private Redis that the spool writes to for this test; never the shared server."""
    server = RedisServer(tmp_path)
    server.start()
    settings.TELEMETRY_SPOOL_URL = server.url
    spool.get_client.cache_clear()
    yield server
    spool.get_client.cache_clear()
    if server.process.poll() is None:
        server.kill()


@pytest.fixture
def committed_sensors(django_db_setup, django_db_blocker):
    """Three sensors of alpha, committed so that a subprocess and a fresh connection see them."""
    with django_db_blocker.unblock():
        with schema_context("alpha"):
            sensors = SensorFactory.create_batch(3, minimum=0, maximum=1000)
        yield sensors
        connection.close()
        with schema_context("alpha"):
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM telemetry_reading WHERE sensor_id = ANY(%s)", [[s.id for s in sensors]])
            for sensor in sensors:
                unit = sensor.unit
                sensor.delete()
                unit.delete()
                unit.site.delete()
    connection.set_schema_to_public()
