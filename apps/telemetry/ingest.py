"""The one path every reading takes into storage.

Drivers, the HTTP ingest endpoint, CSV imports and edge uploads all call
``ingest(schema, samples)``. It validates the samples, drops duplicates,
writes the batch with COPY, and after commit updates the latest-value cache
and hands the stored samples to the registered subscribers.
"""

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django_tenants.utils import schema_context
from psycopg import errors as pg_errors

from apps.sensors.models import Sensor
from apps.sensors.quality import Quality, is_bad
from apps.sensors.samples import Sample

from . import latest, subscribers
from .partitions import ensure_partitions, forget_known_partitions

logger = logging.getLogger(__name__)

_CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS telemetry_ingest_staging (
    sensor_id bigint, time timestamptz, value double precision, quality smallint
) ON COMMIT DELETE ROWS
"""

_INSERT_FROM_STAGING = """
INSERT INTO telemetry_reading (sensor_id, time, value, quality)
SELECT sensor_id, time, value, quality FROM telemetry_ingest_staging
ON CONFLICT (sensor_id, time) DO NOTHING
RETURNING sensor_id, time
"""


@dataclass
class Rejection:
    index: int
    sensor_id: object
    reason: str


@dataclass
class IngestResult:
    """Counts of one ingest call, and in ``stored`` the samples that were new to history."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    stored: list[Sample] = field(default_factory=list)


def ingest(schema, samples):
    """Validate and store ``samples`` in the readings of tenant ``schema``.

    A sample is rejected (and reported with its reason) when its sensor does
    not exist, its time is not a datetime, or it lies further ahead than
    TELEMETRY_MAX_FUTURE_SECONDS. Non-finite values and values outside the
    sensor's physical range are stored with bad quality and no value. A
    sample whose sensor and time are already stored counts as a duplicate
    and adds no row.
    """
    samples = list(samples)
    result = IngestResult()
    if not samples:
        return result

    with schema_context(schema):
        valid = _validate(samples, result)
        unique = _drop_repeats(valid, result)
        if unique:
            with transaction.atomic():
                stored = _write(unique)
                result.stored = stored
                result.accepted = len(stored)
                result.duplicates += len(unique) - len(stored)
                if stored:
                    transaction.on_commit(lambda stored=stored: _after_commit(schema, stored))

    logger.debug(
        "Ingested into schema %s: %d accepted, %d duplicates, %d rejected",
        schema, result.accepted, result.duplicates, len(result.rejected),
    )
    return result


def _validate(samples, result):
    sensor_ids = {sample.sensor_id for sample in samples if isinstance(sample.sensor_id, int)}
    ranges = {
        sensor_id: (minimum, maximum)
        for sensor_id, minimum, maximum in Sensor.objects.filter(id__in=sensor_ids).values_list(
            "id", "minimum", "maximum"
        )
    }
    latest_allowed = datetime.now(timezone.utc) + timedelta(seconds=settings.TELEMETRY_MAX_FUTURE_SECONDS)

    valid = []
    for index, sample in enumerate(samples):
        if sample.sensor_id not in ranges:
            result.rejected.append(
                Rejection(index, sample.sensor_id, f"Sensor {sample.sensor_id!r} does not exist in this tenant.")
            )
            continue
        if not isinstance(sample.time, datetime):
            result.rejected.append(
                Rejection(index, sample.sensor_id, f"Time {sample.time!r} is not a timestamp.")
            )
            continue
        # Naive source times are UTC by convention of the protocols that send them.
        when = sample.time.replace(tzinfo=timezone.utc) if sample.time.tzinfo is None else sample.time
        when = when.astimezone(timezone.utc)
        if when > latest_allowed:
            result.rejected.append(
                Rejection(
                    index,
                    sample.sensor_id,
                    f"Time {when.isoformat()} is more than {settings.TELEMETRY_MAX_FUTURE_SECONDS} s "
                    "ahead of the server clock; check the device clock.",
                )
            )
            continue
        value, quality = _checked_value(sample.value, int(sample.quality), ranges[sample.sensor_id])
        valid.append(Sample(sample.sensor_id, when, value, quality))
    return valid


def _checked_value(value, quality, sensor_range):
    """Return the (value, quality) to store: no number for bad, non-finite or out-of-range values."""
    if value is None:
        return None, quality if is_bad(quality) else int(Quality.BAD)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None, int(Quality.BAD_NOT_A_NUMBER)
    if not math.isfinite(value):
        return None, int(Quality.BAD_NOT_A_NUMBER)
    if is_bad(quality):
        return None, quality
    minimum, maximum = sensor_range
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        return None, int(Quality.BAD_OUT_OF_RANGE)
    return value, quality


def _drop_repeats(samples, result):
    """Keep the first sample per sensor and time; later repeats in the batch count as duplicates."""
    seen = set()
    unique = []
    for sample in samples:
        identity = (sample.sensor_id, sample.time)
        if identity in seen:
            result.duplicates += 1
            continue
        seen.add(identity)
        unique.append(sample)
    return unique


def _write(samples):
    days = {sample.time.date() for sample in samples}
    ensure_partitions(days)
    try:
        with transaction.atomic():
            return _store(samples)
    except (IntegrityError, pg_errors.CheckViolation) as exc:
        # A partition this process believed in can vanish: dropped by
        # retention, or created in a transaction that rolled back.
        if "no partition of relation" not in str(exc):
            raise
        logger.warning("Schema %s: a reading partition was missing; creating it and retrying", connection.schema_name)
        forget_known_partitions(connection.schema_name)
        ensure_partitions(days)
        return _store(samples)


def _store(samples):
    """Insert the samples that are new to history and return them.

    Most batches contain no stored duplicate, so a direct COPY is tried
    first. When it hits the primary key, the batch goes through a staging
    table and INSERT ... ON CONFLICT DO NOTHING instead.
    """
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                _copy_rows(cursor, "telemetry_reading", samples)
            return samples
    except pg_errors.UniqueViolation:
        # COPY reports through psycopg directly, not through Django's error wrapper.
        pass
    with connection.cursor() as cursor:
        cursor.execute(_CREATE_STAGING)
        cursor.execute("TRUNCATE telemetry_ingest_staging")
        _copy_rows(cursor, "telemetry_ingest_staging", samples)
        cursor.execute(_INSERT_FROM_STAGING)
        inserted = set(cursor.fetchall())
    return [sample for sample in samples if (sample.sensor_id, sample.time) in inserted]


def _copy_rows(cursor, table, samples):
    with cursor.copy(f"COPY {table} (sensor_id, time, value, quality) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "timestamptz", "float8", "int2"])
        for sample in samples:
            copy.write_row((sample.sensor_id, sample.time, sample.value, sample.quality))


def _after_commit(schema, stored):
    try:
        live_sensor_ids = latest.store_latest(schema, stored)
    except Exception:
        # History is committed; a cache outage only delays the live view.
        logger.exception("Updating latest values failed for schema %s (%d samples)", schema, len(stored))
        live_sensor_ids = set()
    subscribers.dispatch(schema, stored, live_sensor_ids)
