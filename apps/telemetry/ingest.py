"""The one path every reading takes into storage.

Drivers, the HTTP ingest endpoint, CSV imports and edge uploads all call
``ingest(schema, samples)``. It validates the samples, drops duplicates,
writes the batch with COPY, and after commit updates the latest-value cache
and hands the stored samples to the registered subscribers. When PostgreSQL
is unreachable or too slow, the batch goes to a durable Redis stream
(``apps.telemetry.spool``) and is ingested again from there later.
"""

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django_tenants.utils import schema_context
from psycopg import errors as pg_errors

from apps.sensors.models import Sensor
from apps.sensors.quality import Quality
from apps.sensors.samples import Sample
from apps.tenants.models import MAX_RETENTION_DAYS

from . import latest, spool, subscribers
from .partitions import ensure_partitions, forget_known_partitions
from .retention import retention_cutoff

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
    """Counts of one ingest call, and in ``stored`` the samples that were new to history.

    ``spooled`` counts samples kept in the Redis spool because PostgreSQL
    failed; they are validated and stored when the spool is replayed.
    """

    accepted: int = 0
    spooled: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    stored: list[Sample] = field(default_factory=list)


def ingest(schema, samples, *, spool_on_failure=True):
    """Validate and store ``samples`` in the readings of tenant ``schema``.

    A sample is rejected (and reported with its reason) when its sensor does
    not exist, its time is not a datetime, it lies further ahead than
    TELEMETRY_MAX_FUTURE_SECONDS, or it is older than the tenant's
    ``retention_days`` (for a tenant without one, than
    TELEMETRY_MAX_AGE_DAYS). Non-finite values and values outside the
    sensor's physical range are stored with bad quality and no value. A
    sample whose sensor and time are already stored counts as a duplicate
    and adds no row.

    When PostgreSQL fails (unreachable, connection lost, or the write takes
    longer than TELEMETRY_WRITE_TIMEOUT_SECONDS), the samples are spooled and
    counted in ``spooled``. The database error is raised instead when
    ``spool_on_failure`` is False or the caller has a transaction open. A Redis
    error while spooling is raised too, because then nothing was accepted.
    """
    samples = list(samples)
    result = IngestResult()
    if not samples:
        return result

    may_spool = spool_on_failure and not connection.in_atomic_block
    try:
        _ingest(schema, samples, result, bounded=may_spool)
    except (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError) as exc:
        # COPY raises psycopg's own errors; Django wraps those of the other statements.
        if not may_spool:
            raise
        # A broken connection stays broken until closed; the next call then reconnects.
        connection.close_if_unusable_or_obsolete()
        entry_id = spool.spool(schema, samples)
        logger.warning(
            "Schema %s: storing %d readings failed (%s); spooled them as entry %s",
            schema, len(samples), str(exc).strip(), entry_id,
        )
        return IngestResult(spooled=len(samples))

    logger.debug(
        "Ingested into schema %s: %d accepted, %d duplicates, %d rejected",
        schema, result.accepted, result.duplicates, len(result.rejected),
    )
    return result


def _ingest(schema, samples, result, *, bounded):
    with schema_context(schema):
        unique = _validate(samples, result)
        if not unique:
            return
        with transaction.atomic():
            if bounded:
                # Bounds this transaction's write, so that a stalled PostgreSQL sends the batch to the spool.
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT set_config('statement_timeout', %s, true)",
                        [f"{int(settings.TELEMETRY_WRITE_TIMEOUT_SECONDS * 1000)}ms"],
                    )
            stored = _write(unique)
            result.stored = stored
            result.accepted = len(stored)
            result.duplicates += len(unique) - len(stored)
            if stored:
                transaction.on_commit(lambda stored=stored: _after_commit(schema, stored))


def _validate(samples, result):
    """Return the valid samples in UTC with checked values, dropping repeats of a sensor and time.

    This loop runs once per reading, so it binds names locally and compares
    plain ints instead of ``Quality`` members (an enum comparison costs
    several times more).
    """
    sensor_ids = {sample.sensor_id for sample in samples if isinstance(sample.sensor_id, int)}
    ranges = _sensor_ranges(sensor_ids)
    max_future = settings.TELEMETRY_MAX_FUTURE_SECONDS
    now = datetime.now(UTC)
    latest_allowed = now + timedelta(seconds=max_future)
    # An older reading would create a partition that the next retention run drops. Without retention,
    # the maximum age stops a stray old timestamp from creating partitions back to 1900.
    earliest_allowed = retention_cutoff(connection.schema_name, now)
    if earliest_allowed is None:
        max_age_days = min(settings.TELEMETRY_MAX_AGE_DAYS, MAX_RETENTION_DAYS)
        earliest_allowed = now - timedelta(days=max_age_days)
        too_old = f"older than {earliest_allowed.isoformat()}, the maximum age of {max_age_days} days (THERMACORE_MAX_AGE_DAYS)"
    else:
        too_old = f"older than the tenant's retention cut-off {earliest_allowed.isoformat()}"
    utc = UTC
    rejected = result.rejected
    seen = set()
    valid = []
    for index, sample in enumerate(samples):
        sensor_id = sample.sensor_id
        sensor_range = ranges.get(sensor_id) if isinstance(sensor_id, int) else None
        if sensor_range is None:
            rejected.append(Rejection(index, sensor_id, f"Sensor {sensor_id!r} does not exist in this tenant."))
            continue
        when = sample.time
        if not isinstance(when, datetime):
            rejected.append(Rejection(index, sensor_id, f"Time {when!r} is not a timestamp."))
            continue
        # Naive source times are UTC by convention of the protocols that send them.
        if when.tzinfo is None:
            when = when.replace(tzinfo=utc)
        elif when.tzinfo is not utc:
            when = when.astimezone(utc)
        if when > latest_allowed:
            rejected.append(
                Rejection(
                    index,
                    sensor_id,
                    f"Time {when.isoformat()} is more than {max_future} s "
                    "ahead of the server clock; check the device clock.",
                )
            )
            continue
        if when < earliest_allowed:
            rejected.append(
                Rejection(
                    index,
                    sensor_id,
                    f"Time {when.isoformat()} is {too_old}; send only later readings, or check the device clock.",
                )
            )
            continue
        # Keep the first sample per sensor and time; later repeats in the batch count as duplicates.
        identity = (sensor_id, when)
        if identity in seen:
            result.duplicates += 1
            continue
        seen.add(identity)
        value, quality = _checked_value(sample.value, int(sample.quality), sensor_range)
        valid.append(Sample(sensor_id, when, value, quality))
    return valid


def _sensor_ranges(sensor_ids):
    """Return {sensor id: (minimum, maximum)} of the sensors in ``sensor_ids`` that exist.

    The ids go as one array literal string, because Django's ``id__in`` (one
    placeholder per id) and a list parameter (quoted element by element on
    the client) cost more than the rest of ingest for thousands of sensors.
    """
    # An id outside bigint cannot name a sensor, and PostgreSQL would reject the whole array.
    sensor_ids = [str(int(sensor_id)) for sensor_id in sensor_ids if -(2**63) <= sensor_id < 2**63]
    if not sensor_ids:
        return {}
    table = connection.ops.quote_name(Sensor._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, minimum, maximum FROM {table} WHERE id = ANY(%s::bigint[])", ["{" + ",".join(sensor_ids) + "}"]
        )
        return {sensor_id: (minimum, maximum) for sensor_id, minimum, maximum in cursor.fetchall()}


_BAD = int(Quality.BAD)
_BAD_NOT_A_NUMBER = int(Quality.BAD_NOT_A_NUMBER)
_BAD_OUT_OF_RANGE = int(Quality.BAD_OUT_OF_RANGE)


def _checked_value(value, quality, sensor_range):
    """Return the (value, quality) to store: no number for bad, non-finite or out-of-range values."""
    if value is None:
        return None, max(quality, _BAD)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None, _BAD_NOT_A_NUMBER
    if not math.isfinite(value):
        return None, _BAD_NOT_A_NUMBER
    if quality >= _BAD:
        return None, quality
    minimum, maximum = sensor_range
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        return None, _BAD_OUT_OF_RANGE
    return value, quality


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
