"""Readings retention: drop whole days of readings older than the tenant's ``retention_days``.

With native partitioning each day is a partition named
``telemetry_reading_pYYYYMMDD`` that covers [day, day + 1) in UTC (see
``apps.telemetry.partitions``). A partition is dropped only when its whole
range ends at or before the cut-off, and only after a check that it contains no
reading at or after the cut-off. Readings younger than the cut-off on the
partition of the cut-off day therefore stay until the next day's run. With
TimescaleDB, ``drop_chunks`` applies the same rule to its chunks.

Ingest rejects readings older than the cut-off (``retention_cutoff``), so
that late back-fills do not create partitions that the next run drops.
"""

import logging
import re
import time as monotonic_time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from django.db import OperationalError, connection, transaction
from django.utils import timezone as django_timezone

from apps.audit.choices import AuditAction
from apps.audit.services import Actor, AuditTarget, record
from apps.tenants.models import MAX_RETENTION_DAYS, Tenant
from apps.tenants.quotas import current_tenant

from .partitions import forget_known_partitions, uses_timescaledb

logger = logging.getLogger(__name__)

RETENTION_JOB = "telemetry.apply_retention"
PARTITION_NAME_PATTERN = re.compile(r"^telemetry_reading_p(\d{8})$")
# A DROP waits at most this long for ingest transactions to release the table, then gives up until the next run.
DROP_LOCK_TIMEOUT = "5s"
# Seconds ingest trusts a tenant's retention_days before it reads the tenant row again.
RETENTION_CACHE_SECONDS = 30

_retention_cache = {}


@dataclass
class RetentionResult:
    """Outcome of one retention run in one schema: the dropped partitions or chunks, and the ones kept back."""

    schema: str
    retention_days: int | None = None
    cutoff: datetime | None = None
    dropped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def retention_cutoff(schema, now=None):
    """Return the instant before which readings of ``schema`` are not kept, or None when it keeps them for ever.

    The tenant's ``retention_days`` is cached for RETENTION_CACHE_SECONDS,
    because ingest reads it once per batch.
    """
    clock = monotonic_time.monotonic()
    cached = _retention_cache.get(schema)
    if cached is None or clock - cached[1] > RETENTION_CACHE_SECONDS:
        days = Tenant.objects.filter(schema_name=schema).values_list("retention_days", flat=True).first()
        cached = (days, clock)
        _retention_cache[schema] = cached
    days = cached[0]
    if days is None:
        return None
    return (now or django_timezone.now()) - timedelta(days=min(days, MAX_RETENTION_DAYS))


def forget_cached_retention(schema=None):
    """Drop the cached retention of one schema (or of all), so the next ingest reads the tenant row again."""
    if schema is None:
        _retention_cache.clear()
    else:
        _retention_cache.pop(schema, None)


def partition_day(name):
    """Return the day a daily partition covers, from its name, or None for a table of another name."""
    match = PARTITION_NAME_PATTERN.match(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        return None


def list_partitions():
    """Return the names of the current schema's partitions of the readings table, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT child.relname
            FROM pg_inherits
            JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
            JOIN pg_class child ON child.oid = pg_inherits.inhrelid
            JOIN pg_namespace ON pg_namespace.oid = parent.relnamespace
            WHERE parent.relname = 'telemetry_reading' AND pg_namespace.nspname = current_schema()
            ORDER BY child.relname
            """
        )
        return [row[0] for row in cursor.fetchall()]


def apply_retention(now=None):
    """Drop the current schema's readings older than its tenant's retention; return what was dropped.

    Idempotent: a second run with the same clock finds nothing to drop and
    records nothing. One audit entry lists everything a run dropped.
    """
    schema = connection.schema_name
    tenant = current_tenant()
    result = RetentionResult(schema=schema)
    if tenant is None or tenant.retention_days is None:
        logger.debug("Schema %s keeps readings for ever; no retention to apply", schema)
        return result

    now = now or django_timezone.now()
    result.retention_days = tenant.retention_days
    # A value stored before the model had a maximum would put the cut-off before year 1.
    result.cutoff = now - timedelta(days=min(tenant.retention_days, MAX_RETENTION_DAYS))
    if uses_timescaledb():
        _drop_chunks(result)
    else:
        _drop_partitions(result)

    if result.dropped:
        forget_known_partitions(schema)
        with transaction.atomic():
            record(
                AuditAction.OBJECT_DELETED,
                actor=Actor.system_job(RETENTION_JOB),
                obj=AuditTarget("telemetry.reading", "", "Readings older than the retention period"),
                detail={
                    "retention_days": result.retention_days,
                    "cutoff": result.cutoff.isoformat(),
                    "dropped": result.dropped,
                    "kept": result.skipped,
                },
            )
        logger.info(
            "Schema %s: readings retention of %d days dropped %s (cut-off %s)",
            schema, result.retention_days, ", ".join(result.dropped), result.cutoff.isoformat(),
        )
    else:
        logger.info(
            "Schema %s: readings retention of %d days found nothing before %s to drop",
            schema, result.retention_days, result.cutoff.isoformat(),
        )
    return result


def _drop_partitions(result):
    for name in list_partitions():
        day = partition_day(name)
        if day is None:
            logger.warning("Schema %s: readings partition %s has an unknown name; retention leaves it", result.schema, name)
            continue
        if _day_end(day) > result.cutoff:
            continue
        if _drop_partition(name, result):
            result.dropped.append(name)
        else:
            result.skipped.append(name)


def _day_end(day: date):
    return datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc)


def _drop_partition(name, result):
    """Drop one partition unless it contains a reading at or after the cut-off; return whether it was dropped."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [DROP_LOCK_TIMEOUT])
            # The partition's range ends before the cut-off, so a younger row means its bounds differ from its name.
            cursor.execute(f'SELECT max(time) FROM "{name}"')
            youngest = cursor.fetchone()[0]
            if youngest is not None and youngest >= result.cutoff:
                logger.warning(
                    "Schema %s: partition %s contains a reading at %s, after the cut-off %s, so it was not dropped",
                    result.schema, name, youngest.isoformat(), result.cutoff.isoformat(),
                )
                return False
            cursor.execute(f'DROP TABLE "{name}"')
    except OperationalError as exc:
        # Usually the lock timeout while ingest writes; the next run tries again.
        logger.warning("Schema %s: dropping partition %s failed (%s); retrying at the next run",
                       result.schema, name, str(exc).strip())
        return False
    return True


def _drop_chunks(result):
    # NOTE: this branch has run only against the documented drop_chunks() signature of TimescaleDB 2.x;
    # the test database has no TimescaleDB.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [DROP_LOCK_TIMEOUT])
        cursor.execute("SELECT drop_chunks('telemetry_reading', older_than => %s)", [result.cutoff])
        result.dropped.extend(str(row[0]) for row in cursor.fetchall())
