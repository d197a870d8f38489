"""The intake stream between pollers and ingest, against the real Redis and PostgreSQL.

The stream lives in the test Redis database (THERMACORE_REDIS_URL), which the
suite flushes after every test. Consumer tests use committed sensors, because
ingest spools on failure only outside a transaction.
"""

import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
import redis
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django_tenants.utils import schema_context

from apps.protocols import sinks
from apps.sensors.quality import Quality
from apps.sensors.samples import Sample, SampleRun, expand_samples
from apps.telemetry import intake, spool
from apps.telemetry.intake import DEAD_LETTER_KEY, GROUP, STREAM_KEY, DecodeError, decode_samples, encode_samples
from tests.conftest import free_port_in
from tests.factories import SensorFactory
from tests.telemetry.conftest import RedisServer

T0 = datetime(2026, 1, 5, 10, 0, 0, 123456, tzinfo=UTC)
PORTS = range(24100, 24200)


@pytest.fixture(autouse=True)
def _fresh_clients(monkeypatch):
    monkeypatch.setattr(intake, "_producer_paused_until", 0.0)
    for client in (intake.get_client, intake.get_producer_client, spool.get_client):
        client.cache_clear()
    yield
    for client in (intake.get_client, intake.get_producer_client, spool.get_client):
        client.cache_clear()


@pytest.fixture
def queue_on(settings):
    settings.TELEMETRY_INTAKE_QUEUE = True


def _client():
    return intake.get_client()


def _stored(sensors):
    """Return {sensor id: [(time, value, quality), ...]} in time order, as stored in alpha."""
    with schema_context("alpha"), connection.cursor() as cursor:
        cursor.execute(
            "SELECT sensor_id, time, value, quality FROM telemetry_reading WHERE sensor_id = ANY(%s) "
            "ORDER BY sensor_id, time",
            [[sensor.id for sensor in sensors]],
        )
        stored = {sensor.id: [] for sensor in sensors}
        for sensor_id, when, value, quality in cursor.fetchall():
            stored[sensor_id].append((when, value, quality))
        return stored


def _batch(sensors, first_second, seconds):
    return [
        Sample(sensor.id, T0 + timedelta(seconds=second), float(second % 500), Quality.GOOD)
        for second in range(first_second, first_second + seconds)
        for sensor in sensors
    ]


def _expected(sensors, samples):
    expected = {sensor.id: [] for sensor in sensors}
    for sample in sorted(samples, key=lambda sample: sample.time):
        expected[sample.sensor_id].append((sample.time, sample.value, int(sample.quality)))
    return expected


def _drain(**options):
    options.setdefault("claim_idle_seconds", 60)
    return intake.consume("test-consumer", once=True, **options)


# Encoding -------------------------------------------------------------------


def test_round_trip_keeps_values_and_times():
    plus_two = timezone(timedelta(hours=2))
    samples = [
        Sample(1, T0, 21.5, Quality.GOOD),
        Sample(2, T0, None, Quality.BAD_COMM_LOST),
        Sample(3, T0 + timedelta(microseconds=1), -0.0, Quality.UNCERTAIN_LAST_USABLE),
        Sample(2**63 - 1, datetime(2026, 1, 5, 12, 0, 0, 999999, tzinfo=plus_two), 1e308, 255),
        Sample(-5, datetime(1970, 1, 1, tzinfo=UTC), float("inf"), Quality.GOOD),
        Sample(6, T0, float("-inf"), Quality.GOOD),
    ]

    decoded = decode_samples(encode_samples(samples))

    assert decoded == samples
    assert decoded[1].value is None
    assert decoded[3].time == datetime(2026, 1, 5, 10, 0, 0, 999999, tzinfo=UTC)
    assert decoded[3].time.tzinfo is UTC
    assert math.copysign(1.0, decoded[2].value) == -1.0
    assert [sample.quality for sample in decoded] == [0, 129, 65, 255, 0, 0]


def test_round_trip_keeps_nan():
    decoded = decode_samples(encode_samples([Sample(1, T0, float("nan"), Quality.GOOD)]))

    assert len(decoded) == 1
    assert math.isnan(decoded[0].value)
    assert decoded[0].sensor_id == 1
    assert decoded[0].time == T0


def test_naive_time_is_taken_as_utc():
    naive = datetime(2026, 1, 5, 10, 0, 0, 5)

    decoded = decode_samples(encode_samples([Sample(1, naive, 1.0, 0)]))

    assert decoded[0].time == naive.replace(tzinfo=UTC)


def test_empty_batch_round_trip():
    assert decode_samples(encode_samples([])) == []


def _run(sensor_ids, when, values):
    return SampleRun(tuple(sensor_ids), when, list(values), b"".join(i.to_bytes(8, "little", signed=True) for i in sensor_ids))


def test_round_trip_of_runs_keeps_order():
    later = T0 + timedelta(seconds=1, microseconds=7)
    items = [
        Sample(9, T0, None, Quality.BAD_NOT_IMPLEMENTED),
        _run([1, 2, 3], T0, [1.5, -2.0, 3e300]),
        _run([4], later, [float("inf")]),
        Sample(5, later, 0.25, Quality.UNCERTAIN_LAST_USABLE),
        _run([6, 7], datetime(2026, 1, 5, 10, 0), [0.0, -0.0]),
    ]

    decoded = decode_samples(encode_samples(items))

    # The naive time of the last run comes back in UTC, so only the others compare equal as they are.
    assert decoded[:6] == expand_samples(items)[:6]
    assert [sample.sensor_id for sample in decoded] == [9, 1, 2, 3, 4, 5, 6, 7]
    assert [sample.quality for sample in decoded] == [Quality.BAD_NOT_IMPLEMENTED, 0, 0, 0, 0, 65, 0, 0]
    assert decoded[0].value is None
    assert decoded[4].time == later
    assert decoded[6].time == datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    assert math.copysign(1.0, decoded[7].value) == -1.0


def test_run_payload_equals_sample_payload():
    run = _run([11, 12, 13], T0, [1.0, 2.0, 3.0])

    assert encode_samples([run]) == encode_samples(expand_samples([run]))


@pytest.mark.parametrize(
    "run",
    [
        SampleRun((1, 2), T0, [1.0], b"\x01" + b"\x00" * 15),
        SampleRun((1,), T0, [1.0], b"\x01"),
        SampleRun((1,), "2026-01-05T10:00:00Z", [1.0], b"\x01" + b"\x00" * 7),
        SampleRun((1,), T0, ["1.5"], b"\x01" + b"\x00" * 7),
    ],
)
def test_encode_raises_for_runs_outside_layout(run):
    with pytest.raises(intake._UNPACKABLE):
        encode_samples([run])


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "shorter than the 5-byte header"),
        (b"\x02\x00\x00\x00\x00", "format version 2 is unknown"),
        (b"\x01\x02\x00\x00\x00" + b"\x00" * 26, "does not match its count of 2 samples"),
        (encode_samples([Sample(1, T0, 1.0, 0)]) + b"\x00", "does not match its count of 1 samples"),
    ],
)
def test_decode_rejects_corrupt_payload(payload, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_samples(payload)


def test_decode_rejects_time_out_of_range():
    payload = bytearray(encode_samples([Sample(1, T0, 1.0, 0)]))
    # The time field follows the 5-byte header and the 8-byte sensor id.
    payload[13:21] = (2**63 - 1).to_bytes(8, "little", signed=True)

    with pytest.raises(DecodeError, match="outside the range of datetime"):
        decode_samples(bytes(payload))


@pytest.mark.parametrize(
    "sample",
    [
        Sample("7", T0, 1.0, 0),
        Sample(2**64, T0, 1.0, 0),
        Sample(1, "2026-01-05T10:00:00Z", 1.0, 0),
        Sample(1, T0, "1.5", 0),
        Sample(1, T0, 1.0, 256),
    ],
)
def test_encode_raises_for_fields_outside_layout(sample):
    with pytest.raises(intake._UNPACKABLE):
        encode_samples([sample])


# Producer -------------------------------------------------------------------


def test_enqueue_appends_one_entry():
    samples = [Sample(1, T0, 2.5, 0), Sample(2, T0, None, Quality.BAD)]

    queued = intake.enqueue("alpha", samples)

    entries = _client().xrange(STREAM_KEY)
    assert queued == 2
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"schema"] == b"alpha"
    assert decode_samples(fields[b"samples"]) == samples


def test_enqueue_empty_batch_adds_nothing():
    assert intake.enqueue("alpha", []) == 0
    assert _client().xlen(STREAM_KEY) == 0


def test_enqueue_rejects_invalid_schema():
    with pytest.raises(ValueError, match="Invalid schema None"):
        intake.enqueue(None, [Sample(1, T0, 1.0, 0)])


def test_enqueue_ingests_unencodable_samples_directly(alpha, caplog):
    sensor = SensorFactory(minimum=0, maximum=100)
    samples = [
        Sample(sensor.id, T0, 5.0, 0),
        Sample("not-an-id", T0, 5.0, 0),
        Sample(sensor.id, "yesterday", 5.0, 0),
    ]

    with caplog.at_level(logging.WARNING, logger="apps.telemetry.intake"):
        accepted = intake.enqueue("alpha", samples)

    entries = _client().xrange(STREAM_KEY)
    assert accepted == 1
    assert len(entries) == 1
    assert decode_samples(entries[0][1][b"samples"]) == [samples[0]]
    assert "Schema alpha: 2 samples rejected, first of sensor 'not-an-id'" in caplog.text
    assert "does not exist in this tenant" in caplog.text


def test_enqueue_ingests_directly_when_redis_is_down(alpha, settings, caplog):
    sensor = SensorFactory(minimum=0, maximum=100)
    settings.TELEMETRY_SPOOL_URL = f"redis://127.0.0.1:{free_port_in(PORTS)}/0"
    intake.get_client.cache_clear()

    with caplog.at_level(logging.WARNING, logger="apps.telemetry.intake"):
        accepted = intake.enqueue("alpha", [Sample(sensor.id, T0, 5.0, 0)])

    assert accepted == 1
    assert "appending 1 samples to the intake stream failed" in caplog.text
    with connection.cursor() as cursor:
        cursor.execute("SELECT value FROM telemetry_reading WHERE sensor_id = %s", [sensor.id])
        assert cursor.fetchall() == [(5.0,)]


def test_hung_redis_pauses_the_queue(alpha, settings, caplog):
    sensor = SensorFactory(minimum=0, maximum=100)
    # A listening socket that accepts connections and never replies, as a hung Redis does.
    silent = socket.socket()
    silent.bind(("127.0.0.1", free_port_in(PORTS)))
    silent.listen(8)
    settings.TELEMETRY_SPOOL_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
    intake.get_producer_client.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="apps.telemetry.intake"):
            started = time.monotonic()
            first = intake.enqueue("alpha", [Sample(sensor.id, T0, 5.0, 0)])
            first_seconds = time.monotonic() - started
            started = time.monotonic()
            second = intake.enqueue("alpha", [Sample(sensor.id, T0 + timedelta(seconds=1), 6.0, 0)])
            second_seconds = time.monotonic() - started
    finally:
        silent.close()

    assert (first, second) == (1, 1)
    # The first batch waited for the producer's socket timeout, the second did not try the stream at all.
    assert first_seconds < 5
    assert second_seconds < first_seconds
    assert caplog.text.count("appending 1 samples to the intake stream failed") == 1
    assert "batches of the next 30 s directly" in caplog.text
    assert len(_stored([sensor])[sensor.id]) == 2


def test_run_ingest_backlog_names_unreachable_redis(settings):
    settings.TELEMETRY_SPOOL_URL = f"redis://:secret@127.0.0.1:{free_port_in(PORTS)}/0"
    intake.get_client.cache_clear()

    with pytest.raises(CommandError, match=r"Cannot read the intake stream at redis://:\*\*\*@127\.0\.0\.1:\d+/0") as error:
        call_command("run_ingest", "--backlog")

    assert "secret" not in str(error.value)


# Hand-off from protocol code ----------------------------------------------


def test_full_stream_pauses_the_queue(alpha, settings, caplog):
    settings.TELEMETRY_INTAKE_MAX_ENTRIES = 2
    sensor = SensorFactory(minimum=0, maximum=100)
    batches = [[Sample(sensor.id, T0 + timedelta(seconds=second), float(second), 0)] for second in range(4)]

    with caplog.at_level(logging.WARNING, logger="apps.telemetry.intake"):
        accepted = [intake.enqueue("alpha", batch) for batch in batches]

    assert accepted == [1, 1, 1, 1]
    assert _client().xlen(STREAM_KEY) == 2
    assert "the intake stream contains 2 entries (THERMACORE_INTAKE_MAX_ENTRIES is 2)" in caplog.text
    with connection.cursor() as cursor:
        cursor.execute("SELECT value FROM telemetry_reading WHERE sensor_id = %s ORDER BY time", [sensor.id])
        assert cursor.fetchall() == [(2.0,), (3.0,)]


def test_hand_off_queues_when_setting_on(alpha, queue_on):
    sensor = SensorFactory(minimum=0, maximum=100)

    result = sinks.hand_off_samples("alpha", [Sample(sensor.id, T0, 5.0, 0), Sample(sensor.id, T0, 6.0, 0)])

    assert result.accepted == 2
    assert result.rejected == []
    assert _client().xlen(STREAM_KEY) == 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM telemetry_reading WHERE sensor_id = %s", [sensor.id])
        assert cursor.fetchone() == (0,)


def test_hand_off_stores_when_setting_off(alpha, settings):
    settings.TELEMETRY_INTAKE_QUEUE = False
    sensor = SensorFactory(minimum=0, maximum=100)

    result = sinks.hand_off_samples("alpha", [Sample(sensor.id, T0, 5.0, 0), Sample(-1, T0, 6.0, 0)])

    assert result.accepted == 1
    assert [rejection.sensor_id for rejection in result.rejected] == [-1]
    assert _client().xlen(STREAM_KEY) == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT value FROM telemetry_reading WHERE sensor_id = %s", [sensor.id])
        assert cursor.fetchall() == [(5.0,)]


def test_hand_off_counts_run_values(alpha, queue_on):
    sensors = [SensorFactory(minimum=0, maximum=100) for _ in range(3)]
    run = _run([sensor.id for sensor in sensors], T0, [1.0, 2.0, 3.0])

    result = sinks.hand_off_samples("alpha", [run, Sample(sensors[0].id, T0 + timedelta(seconds=1), 4.0, 0)])

    entries = _client().xrange(STREAM_KEY)
    assert result.accepted == 4
    assert len(entries) == 1
    assert decode_samples(entries[0][1][b"samples"]) == expand_samples([run]) + [
        Sample(sensors[0].id, T0 + timedelta(seconds=1), 4.0, 0)
    ]


def test_hand_off_stores_runs_when_setting_off(alpha, settings):
    settings.TELEMETRY_INTAKE_QUEUE = False
    sensors = [SensorFactory(minimum=0, maximum=100) for _ in range(2)]

    result = sinks.hand_off_samples("alpha", [_run([sensor.id for sensor in sensors], T0, [5.0, 6.0])])

    assert result.accepted == 2
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sensor_id, value FROM telemetry_reading WHERE sensor_id = ANY(%s) ORDER BY sensor_id",
            [[sensor.id for sensor in sensors]],
        )
        assert cursor.fetchall() == [(sensors[0].id, 5.0), (sensors[1].id, 6.0)]


def test_unencodable_run_is_ingested_directly(alpha, queue_on, caplog):
    sensor = SensorFactory(minimum=0, maximum=100)
    # Too few id bytes make the run unencodable as a whole; its samples are queued one by one.
    broken = SampleRun((sensor.id,), T0, [7.0], b"")

    accepted = intake.enqueue("alpha", [broken, Sample("x", T0, 1.0, 0)])

    entries = _client().xrange(STREAM_KEY)
    assert accepted == 1
    assert len(entries) == 1
    assert decode_samples(entries[0][1][b"samples"]) == [Sample(sensor.id, T0, 7.0, 0)]


def test_tests_run_with_queue_off_by_default():
    assert settings.TELEMETRY_INTAKE_QUEUE is False


# Consumer -------------------------------------------------------------------


def test_consumer_stores_each_sample_once(committed_sensors, django_db_blocker):
    first, second, third = committed_sensors
    plus_five = timezone(timedelta(hours=5, minutes=30))
    samples = [
        Sample(first.id, T0, 12.25, Quality.GOOD),
        Sample(second.id, T0, None, Quality.BAD_COMM_LOST),
        Sample(third.id, T0, float("nan"), Quality.GOOD),
        Sample(first.id, T0 + timedelta(microseconds=1), 13.0, Quality.UNCERTAIN_SENSOR_CAL),
        Sample(second.id, datetime(2026, 1, 5, 15, 30, 1, 7, tzinfo=plus_five), 999.5, Quality.GOOD),
        Sample(third.id, T0 + timedelta(seconds=1), 5000.0, Quality.GOOD),
    ]
    with django_db_blocker.unblock():
        intake.enqueue("alpha", samples[:3])
        intake.enqueue("alpha", samples[3:])
        totals = _drain()
        again = _drain()
        stored = _stored(committed_sensors)

    assert totals.entries == 2
    assert totals.stored == 6
    assert again.entries == 0
    assert stored[first.id] == [(T0, 12.25, 0), (T0 + timedelta(microseconds=1), 13.0, 66)]
    assert stored[second.id] == [(T0, None, 129), (datetime(2026, 1, 5, 10, 0, 1, 7, tzinfo=UTC), 999.5, 0)]
    # Ingest validation marks the NaN and the value above the sensor's maximum of 1000.
    assert stored[third.id] == [(T0, None, 132), (T0 + timedelta(seconds=1), None, 130)]
    assert _client().xlen(STREAM_KEY) == 0
    assert intake.backlog() == {"length": 0, "pending": 0, "oldest_age_seconds": 0.0, "dead_letters": 0}


def test_consumer_flushes_by_max_samples(committed_sensors, django_db_blocker):
    batches = [_batch(committed_sensors, second, 10) for second in range(0, 100, 10)]
    consumer = intake.IntakeConsumer("sized", max_samples=60, claim_idle_seconds=60)
    with django_db_blocker.unblock():
        for batch in batches:
            intake.enqueue("alpha", batch)
        processed = consumer.run_batch(once=True)
        consumer.run(once=True)
        stored = _stored(committed_sensors)

    # Each entry contains 30 samples, so the first batch stops at two entries.
    assert processed == 2
    assert consumer.totals.entries == 10
    assert stored == _expected(committed_sensors, [sample for batch in batches for sample in batch])


def test_abandoned_entries_are_claimed(committed_sensors, django_db_blocker):
    batches = [_batch(committed_sensors, second, 5) for second in range(0, 20, 5)]
    client = _client()
    with django_db_blocker.unblock():
        for batch in batches:
            intake.enqueue("alpha", batch)
        client.xgroup_create(STREAM_KEY, GROUP, id="0")
        # A consumer that read the entries and died before it acknowledged them.
        read = client.xreadgroup(GROUP, "dead-consumer", {STREAM_KEY: ">"}, count=100)
        patient = _drain(claim_idle_seconds=60)
        pending_before = client.xpending(STREAM_KEY, GROUP)["pending"]
        totals = _drain(claim_idle_seconds=0)
        stored = _stored(committed_sensors)

    assert len(read[0][1]) == len(batches)
    assert patient.entries == 0
    assert pending_before == len(batches)
    assert totals.entries == len(batches)
    assert totals.stored == sum(len(batch) for batch in batches)
    assert stored == _expected(committed_sensors, [sample for batch in batches for sample in batch])
    assert client.xpending(STREAM_KEY, GROUP)["pending"] == 0
    assert client.xlen(STREAM_KEY) == 0


def test_crash_before_ack_stores_once(committed_sensors, django_db_blocker, monkeypatch):
    batches = [_batch(committed_sensors, second, 5) for second in range(0, 15, 5)]
    crashing = intake.IntakeConsumer("crashing", claim_idle_seconds=60)

    def crash(entry_ids):
        raise KeyboardInterrupt

    with django_db_blocker.unblock():
        for batch in batches:
            intake.enqueue("alpha", batch)
        monkeypatch.setattr(crashing, "_ack_and_delete", crash)
        # The samples are committed, but the process dies before XACK.
        with pytest.raises(KeyboardInterrupt):
            crashing.run(once=True)
        stored_after_crash = _stored(committed_sensors)
        totals = _drain(claim_idle_seconds=0)
        stored = _stored(committed_sensors)

    expected = _expected(committed_sensors, [sample for batch in batches for sample in batch])
    assert stored_after_crash == expected
    assert totals.entries == len(batches)
    assert totals.stored == 0
    assert totals.duplicates == sum(len(batch) for batch in batches)
    assert stored == expected
    assert _client().xlen(STREAM_KEY) == 0


def test_failed_ack_is_retried_without_reingest(committed_sensors, django_db_blocker, monkeypatch, caplog):
    batch = _batch(committed_sensors, 0, 5)
    consumer = intake.IntakeConsumer("flaky-ack", claim_idle_seconds=60)
    real_ack = consumer._ack_and_delete
    calls = []

    def ack_failing_once(entry_ids):
        calls.append(list(entry_ids))
        if len(calls) == 1:
            raise redis.ConnectionError("simulated connection loss")
        real_ack(entry_ids)

    monkeypatch.setattr(consumer, "_ack_and_delete", ack_failing_once)
    monkeypatch.setattr(intake, "MAX_BACKOFF_SECONDS", 0.01)
    with django_db_blocker.unblock():
        intake.enqueue("alpha", batch)
        with caplog.at_level(logging.WARNING, logger="apps.telemetry.intake"):
            consumer.run(once=True)
        stored = _stored(committed_sensors)

    assert len(calls) == 2
    assert calls[0] == calls[1]
    assert consumer.totals.stored == len(batch)
    assert consumer.totals.duplicates == 0
    assert stored == _expected(committed_sensors, batch)
    assert "ConnectionError: simulated connection loss; retrying in" in caplog.text
    assert _client().xlen(STREAM_KEY) == 0


def test_restarted_consumer_takes_up_own_pending(committed_sensors, django_db_blocker):
    batch = _batch(committed_sensors, 0, 5)
    client = _client()
    with django_db_blocker.unblock():
        intake.enqueue("alpha", batch)
        client.xgroup_create(STREAM_KEY, GROUP, id="0")
        client.xreadgroup(GROUP, "host:1", {STREAM_KEY: ">"}, count=100)
        # The same name, as a container restarted with the same host name and pid gets.
        totals = intake.consume("host:1", once=True, claim_idle_seconds=60)
        stored = _stored(committed_sensors)

    assert totals.entries == 1
    assert stored == _expected(committed_sensors, batch)
    assert client.xlen(STREAM_KEY) == 0


def test_unknown_schema_is_dropped_without_blocking(committed_sensors, django_db_blocker, caplog):
    batch = _batch(committed_sensors, 0, 5)
    with django_db_blocker.unblock():
        intake.enqueue("ghost", _batch(committed_sensors, 100, 2))
        intake.enqueue("alpha", batch)
        intake.enqueue("ghost", _batch(committed_sensors, 200, 2))
        with caplog.at_level(logging.WARNING, logger="apps.telemetry.intake"):
            totals = _drain()
        stored = _stored(committed_sensors)

    assert totals.dropped == 12
    assert stored == _expected(committed_sensors, batch)
    assert "schema ghost does not exist; dropping 2 entries with 12 samples" in caplog.text
    assert _client().xlen(STREAM_KEY) == 0


def test_corrupt_entry_goes_to_dead_letters(committed_sensors, django_db_blocker, caplog):
    batch = _batch(committed_sensors, 0, 5)
    client = _client()
    with django_db_blocker.unblock():
        corrupt_id = client.xadd(STREAM_KEY, {"schema": "alpha", "samples": b"\x01\xff\xff\xff\xff"})
        missing_id = client.xadd(STREAM_KEY, {"schema": "alpha"})
        intake.enqueue("alpha", batch)
        with caplog.at_level(logging.ERROR, logger="apps.telemetry.intake"):
            totals = _drain()
        stored = _stored(committed_sensors)

    dead = client.xrange(DEAD_LETTER_KEY)
    assert totals.dead_letters == 2
    assert stored == _expected(committed_sensors, batch)
    assert [fields[b"entry_id"] for _id, fields in dead] == [corrupt_id, missing_id]
    assert b"does not match its count" in dead[0][1][b"reason"]
    assert dead[0][1][b"samples"] == b"\x01\xff\xff\xff\xff"
    assert b"lack 'schema' or 'samples'" in dead[1][1][b"reason"]
    assert f"entry {corrupt_id.decode()} moved to {DEAD_LETTER_KEY}" in caplog.text
    assert client.xlen(STREAM_KEY) == 0
    assert intake.backlog()["dead_letters"] == 2


def test_database_failure_spools_and_acks(committed_sensors, django_db_blocker, settings):
    settings.TELEMETRY_WRITE_TIMEOUT_SECONDS = 0.5
    first = _batch(committed_sensors, 0, 5)
    blocked = _batch(committed_sensors, 5, 5)
    database = connection.settings_dict
    with django_db_blocker.unblock():
        intake.enqueue("alpha", first)
        _drain()
        intake.enqueue("alpha", blocked)
        # Another session locks the readings table, so the write outlasts the timeout.
        with psycopg.connect(host="127.0.0.1", port=database["PORT"] or 5432,
                             user=database["USER"], dbname=database["NAME"]) as locker:
            locker.execute("LOCK TABLE alpha.telemetry_reading IN ACCESS EXCLUSIVE MODE")
            totals = _drain()
            locker.rollback()
        left_in_stream = _client().xlen(STREAM_KEY)
        spooled_entries = spool.pending("alpha")
        spool.replay("alpha")
        stored = _stored(committed_sensors)

    assert totals.spooled == len(blocked)
    assert left_in_stream == 0
    assert spooled_entries == 1
    assert stored == _expected(committed_sensors, first + blocked)


def test_ingest_error_retries_then_dead_letters(committed_sensors, django_db_blocker, monkeypatch, caplog):
    batch = _batch(committed_sensors, 0, 2)
    calls = []

    def broken_ingest(schema, samples):
        calls.append(len(samples))
        raise RuntimeError("simulated ingest bug")

    monkeypatch.setattr(intake, "ingest", broken_ingest)
    monkeypatch.setattr(intake, "MAX_BACKOFF_SECONDS", 0.01)
    with django_db_blocker.unblock():
        intake.enqueue("alpha", batch)
        with caplog.at_level(logging.WARNING, logger="apps.telemetry.intake"):
            totals = _drain()

    dead = _client().xrange(DEAD_LETTER_KEY)
    assert calls == [len(batch)] * intake.MAX_INGEST_ATTEMPTS
    assert totals.dead_letters == 1
    assert b"ingest failed 5 times: RuntimeError: simulated ingest bug" in dead[0][1][b"reason"]
    assert "ingest of schema alpha failed for entries" in caplog.text
    assert _client().xlen(STREAM_KEY) == 0


def test_backlog_reports_pending_and_age():
    client = _client()
    intake.enqueue("alpha", [Sample(1, T0, 1.0, 0)])
    intake.enqueue("alpha", [Sample(1, T0, 2.0, 0)])
    client.xgroup_create(STREAM_KEY, GROUP, id="0")
    client.xreadgroup(GROUP, "reader", {STREAM_KEY: ">"}, count=1)
    time.sleep(0.05)

    backlog = intake.backlog()

    assert backlog["length"] == 2
    assert backlog["pending"] == 1
    assert 0.05 <= backlog["oldest_age_seconds"] < 10
    assert backlog["dead_letters"] == 0


def test_consumer_rejects_invalid_options():
    with pytest.raises(ValueError, match="Invalid block_ms 0"):
        intake.IntakeConsumer("c", block_ms=0)
    with pytest.raises(ValueError, match="Invalid max_samples 0"):
        intake.IntakeConsumer("c", max_samples=0)
    for claim_idle in (-1, 1e300, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=re.escape(f"Invalid claim idle time {claim_idle!r} s. Pass 0 to 86400 seconds")):
            intake.IntakeConsumer("c", claim_idle_seconds=claim_idle)
    with pytest.raises(ValueError, match="Invalid consumer name ''"):
        intake.IntakeConsumer("")


# Redis outage -----------------------------------------------------------------


@pytest.mark.slow
def test_consumer_survives_redis_restart(committed_sensors, django_db_blocker, tmp_path, settings, caplog):
    server = RedisServer(tmp_path)
    server.port = free_port_in(PORTS)
    server.start()
    settings.TELEMETRY_SPOOL_URL = server.url
    intake.get_client.cache_clear()
    before = _batch(committed_sensors, 0, 5)
    after = _batch(committed_sensors, 5, 5)
    stop = threading.Event()
    outcome = {}

    def run_consumer():
        try:
            outcome["totals"] = intake.consume("survivor", block_ms=100, stop=stop, claim_idle_seconds=60)
        finally:
            connection.close()

    try:
        with django_db_blocker.unblock(), caplog.at_level(logging.WARNING, logger="apps.telemetry.intake"):
            intake.enqueue("alpha", before)
            worker = threading.Thread(target=run_consumer)
            worker.start()
            _wait_for(lambda: _stored(committed_sensors) == _expected(committed_sensors, before))
            server.kill()
            time.sleep(0.5)
            server.start()
            intake.get_client.cache_clear()
            intake.enqueue("alpha", after)
            _wait_for(lambda: _stored(committed_sensors) == _expected(committed_sensors, before + after))
            stop.set()
            worker.join(timeout=40)
            left = redis.Redis.from_url(server.url).xlen(STREAM_KEY)
    finally:
        stop.set()
        if server.process.poll() is None:
            server.kill()

    assert not worker.is_alive()
    assert outcome["totals"].stored == len(before) + len(after)
    assert "retrying in" in caplog.text
    assert left == 0


def test_pending_entries_reread_after_redis_error(committed_sensors, django_db_blocker):
    samples = _batch(committed_sensors, 0, 5)
    consumer = intake.IntakeConsumer("rereader", claim_idle_seconds=60)
    with django_db_blocker.unblock():
        intake.enqueue("alpha", samples)
        consumer._ensure_group()
        # The consumer read the entry and had it only in memory when Redis failed.
        _client().xreadgroup(GROUP, "rereader", {STREAM_KEY: ">"}, count=10)
        consumer._own_pending_read = True
        stopped = threading.Event()
        stopped.set()
        consumer._back_off(redis.ConnectionError("Connection reset by peer"), stopped)

        totals = consumer.run(once=True)

    # Taken up again at once, not after the 60 s claim idle time.
    assert totals.stored == len(samples)
    assert _stored(committed_sensors) == _expected(committed_sensors, samples)
    assert _client().xlen(STREAM_KEY) == 0


def _wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met within the timeout"
        time.sleep(0.1)


# The command ------------------------------------------------------------------


def test_run_ingest_once_drains(committed_sensors, django_db_blocker, caplog):
    batches = [_batch(committed_sensors, second, 5) for second in range(0, 15, 5)]
    sigint = signal.getsignal(signal.SIGINT)
    with django_db_blocker.unblock():
        for batch in batches:
            intake.enqueue("alpha", batch)
        with caplog.at_level(logging.INFO, logger="apps.telemetry.intake"):
            call_command("run_ingest", "--once", "--name", "ops-drain")
        stored = _stored(committed_sensors)

    assert stored == _expected(committed_sensors, [sample for batch in batches for sample in batch])
    assert _client().xlen(STREAM_KEY) == 0
    assert "Intake consumer ops-drain started" in caplog.text
    assert "Intake consumer ops-drain stopped (stream drained): 3 entries, 45 samples stored" in caplog.text
    assert "left the group" in caplog.text
    assert signal.getsignal(signal.SIGINT) is sigint


def test_run_ingest_rejects_invalid_block(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="Invalid block_ms 0"):
        call_command("run_ingest", "--block-ms", "0")


@pytest.mark.slow
def test_run_ingest_stops_on_sigterm(committed_sensors, django_db_blocker):
    batch = _batch(committed_sensors, 0, 5)
    database = connection.settings_dict
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "thermacore.settings",
        "PYTHONPATH": str(settings.BASE_DIR),
        "THERMACORE_DATABASE_URL": f"postgres://{database['USER']}@127.0.0.1:{database['PORT'] or 5432}/{database['NAME']}",
        "THERMACORE_SPOOL_URL": settings.TELEMETRY_SPOOL_URL,
        "THERMACORE_LOG_LEVEL": "INFO",
    }
    with django_db_blocker.unblock():
        process = subprocess.Popen(
            [sys.executable, str(settings.BASE_DIR / "manage.py"), "run_ingest"],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            intake.enqueue("alpha", batch)
            _wait_for(lambda: _stored(committed_sensors) == _expected(committed_sensors, batch))
            process.send_signal(signal.SIGTERM)
            _out, log = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    assert process.returncode == 0, log
    assert f"Intake consumer {os.uname().nodename}:{process.pid} started" in log
    assert "stopped (SIGTERM): 1 entries, 15 samples stored" in log
    assert _client().xlen(STREAM_KEY) == 0


def test_run_ingest_prints_backlog(capsys):
    intake.enqueue("alpha", [Sample(1, T0, 1.0, 0)])

    call_command("run_ingest", "--backlog")

    backlog = json.loads(capsys.readouterr().out)
    assert backlog["length"] == 1
    assert backlog["pending"] == 0
    assert backlog["dead_letters"] == 0
    assert backlog["oldest_age_seconds"] >= 0
