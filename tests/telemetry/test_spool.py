"""Faults the ingest pipeline survives without losing or doubling an accepted reading.

PostgreSQL outages are made by pointing the connection at a closed port, by
terminating its backend, and by a lock that outlasts the write timeout. The
spool uses a private redis-server (append-only file, fsync always), which the
Redis restart test kills and starts again.
"""

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django_tenants.utils import schema_context

from apps.sensors.samples import Sample
from apps.telemetry import spool
from apps.telemetry.ingest import ingest
from tests.conftest import free_port

START = datetime(2026, 1, 5, 10, tzinfo=timezone.utc)


def _batch(sensors, first_second, seconds):
    return [
        Sample(sensor.id, START + timedelta(seconds=second), float(second % 500), 0)
        for second in range(first_second, first_second + seconds)
        for sensor in sensors
    ]


def _stored(sensors):
    """Return {sensor id: [(time, value), ...]} in time order, as stored."""
    with schema_context("alpha"), connection.cursor() as cursor:
        cursor.execute(
            "SELECT sensor_id, time, value FROM telemetry_reading WHERE sensor_id = ANY(%s) ORDER BY sensor_id, time",
            [[sensor.id for sensor in sensors]],
        )
        stored = {sensor.id: [] for sensor in sensors}
        for sensor_id, time, value in cursor.fetchall():
            stored[sensor_id].append((time, value))
        return stored


def _expected(sensors, samples):
    expected = {sensor.id: [] for sensor in sensors}
    for sample in sorted(samples, key=lambda sample: sample.time):
        expected[sample.sensor_id].append((sample.time, sample.value))
    return expected


class _ClosedPort:
    """Point the default connection at a loopback port nobody listens on, until restored."""

    def __enter__(self):
        self.port = connection.settings_dict["PORT"]
        connection.close()
        connection.settings_dict["PORT"] = str(free_port())
        return self

    def __exit__(self, *exc_info):
        connection.close()
        connection.settings_dict["PORT"] = self.port


def test_unreachable_database_spools_and_replays(committed_sensors, spool_redis, django_db_blocker):
    before = _batch(committed_sensors, 0, 10)
    during = [_batch(committed_sensors, 10, 10), _batch(committed_sensors, 20, 10)]
    with django_db_blocker.unblock():
        assert ingest("alpha", before).accepted == len(before)
        with _ClosedPort():
            results = [ingest("alpha", batch) for batch in during]
        pending = spool.pending("alpha")
        replayed = spool.replay("alpha")
        replayed_again = spool.replay("alpha")
        stored = _stored(committed_sensors)

    assert [result.spooled for result in results] == [len(batch) for batch in during]
    assert [result.accepted for result in results] == [0, 0]
    assert pending == 2
    assert replayed == 2
    assert replayed_again == 0
    assert spool.pending("alpha") == 0
    assert stored == _expected(committed_sensors, before + during[0] + during[1])


def test_terminated_backend_spools_batch(committed_sensors, spool_redis, django_db_blocker):
    batch = _batch(committed_sensors, 0, 5)
    with django_db_blocker.unblock():
        connection.ensure_connection()
        backend_pid = connection.connection.info.backend_pid
        with psycopg.connect(host="127.0.0.1", port=connection.settings_dict["PORT"] or 5432,
                             user=connection.settings_dict["USER"], dbname=connection.settings_dict["NAME"],
                             autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [backend_pid])
        result = ingest("alpha", batch)
        replayed = spool.replay("alpha")
        stored = _stored(committed_sensors)

    assert result.spooled == len(batch)
    assert replayed == 1
    assert stored == _expected(committed_sensors, batch)


def test_slow_database_write_is_spooled(committed_sensors, spool_redis, django_db_blocker, settings):
    settings.TELEMETRY_WRITE_TIMEOUT_SECONDS = 0.5
    first = _batch(committed_sensors, 0, 5)
    blocked = _batch(committed_sensors, 5, 5)
    with django_db_blocker.unblock():
        ingest("alpha", first)
        # Another session holds the readings table, as a long maintenance job or lock queue would.
        with psycopg.connect(host="127.0.0.1", port=connection.settings_dict["PORT"] or 5432,
                             user=connection.settings_dict["USER"], dbname=connection.settings_dict["NAME"]) as locker:
            locker.execute("LOCK TABLE alpha.telemetry_reading IN ACCESS EXCLUSIVE MODE")
            result = ingest("alpha", blocked)
            locker.rollback()
        replayed = spool.replay("alpha")
        stored = _stored(committed_sensors)

    assert result.spooled == len(blocked)
    assert replayed == 1
    assert stored == _expected(committed_sensors, first + blocked)


def test_spool_survives_redis_restart(committed_sensors, spool_redis, django_db_blocker):
    batches = [_batch(committed_sensors, second, 10) for second in range(0, 50, 10)]
    with django_db_blocker.unblock():
        with _ClosedPort():
            results = [ingest("alpha", batch) for batch in batches]
        spool_redis.kill()
        spool_redis.start()
        spool.get_client.cache_clear()
        pending = spool.pending("alpha")
        replayed = spool.replay("alpha")
        stored = _stored(committed_sensors)

    assert sum(result.spooled for result in results) == sum(len(batch) for batch in batches)
    assert pending == len(batches)
    assert replayed == len(batches)
    assert stored == _expected(committed_sensors, [sample for batch in batches for sample in batch])


def test_replay_interrupted_after_commit_stores_once(committed_sensors, spool_redis, django_db_blocker, monkeypatch):
    batches = [_batch(committed_sensors, second, 10) for second in range(0, 40, 10)]
    client = spool.get_client()
    real_xdel = client.xdel
    calls = []

    def xdel_then_crash(*args):
        calls.append(args)
        if len(calls) == 2:
            # The second entry is committed to PostgreSQL, but the process dies before deleting it.
            raise KeyboardInterrupt
        return real_xdel(*args)

    with django_db_blocker.unblock():
        with _ClosedPort():
            for batch in batches:
                ingest("alpha", batch)
        monkeypatch.setattr(client, "xdel", xdel_then_crash)
        with pytest.raises(KeyboardInterrupt):
            spool.replay("alpha")
        monkeypatch.setattr(client, "xdel", real_xdel)
        # The interrupted replay left its lock behind; it would expire after LOCK_TIMEOUT_SECONDS.
        client.delete(f"{spool.spool_key('alpha')}:replay")
        replayed = spool.replay("alpha")
        stored = _stored(committed_sensors)

    assert replayed == len(batches) - 1
    assert stored == _expected(committed_sensors, [sample for batch in batches for sample in batch])


_REPLAY_WORKER = """
import time
import django
django.setup()
from apps.telemetry import spool
spool.LOCK_TIMEOUT_SECONDS = 1

def report(entry_id):
    print(entry_id, flush=True)
    time.sleep(0.05)

spool.replay("alpha", on_entry=report)
"""


def test_killed_replay_worker_loses_nothing(committed_sensors, spool_redis, django_db_blocker):
    batches = [_batch(committed_sensors, second, 5) for second in range(0, 200, 5)]
    database = connection.settings_dict
    with django_db_blocker.unblock():
        with _ClosedPort():
            for batch in batches:
                ingest("alpha", batch)
        environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "thermacore.settings",
            "PYTHONPATH": str(settings.BASE_DIR),
            "THERMACORE_DATABASE_URL": f"postgres://{database['USER']}@127.0.0.1:{database['PORT'] or 5432}/{database['NAME']}",
            "THERMACORE_SPOOL_URL": spool_redis.url,
        }
        worker = subprocess.Popen([sys.executable, "-c", _REPLAY_WORKER], env=environment,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(10):
            assert worker.stdout.readline(), worker.stderr.read()
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        left_after_kill = spool.pending("alpha")
        # The killed worker's lock expires after the 1 s it was given.
        time.sleep(1.5)
        replayed = spool.replay("alpha")
        stored = _stored(committed_sensors)

    assert 0 < left_after_kill < len(batches)
    assert replayed == left_after_kill
    assert stored == _expected(committed_sensors, [sample for batch in batches for sample in batch])
