"""Daily partitions of the readings table, for PostgreSQL without TimescaleDB.

TimescaleDB creates its chunks by itself; native partitioning needs each
day's partition before the first row of that day arrives, so partitions are
created ahead by a periodic task and, for back-filled history, on demand.
"""

import logging
from datetime import date, datetime, time, timedelta, timezone

from django.conf import settings
from django.db import connection, transaction

logger = logging.getLogger(__name__)

# Partitions known to exist, per schema, so that ingest queries PostgreSQL only once per day.
_known = {}


def uses_timescaledb():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
        return cursor.fetchone() is not None


def partition_name(day):
    return f"telemetry_reading_p{day:%Y%m%d}"


def ensure_partitions(days):
    """Create the daily partitions of the current schema's readings table for the given dates."""
    schema = connection.schema_name
    known = _known.setdefault(schema, set())
    missing = sorted(set(days) - known)
    if not missing:
        return
    if uses_timescaledb():
        known.update(missing)
        return
    with connection.cursor() as cursor:
        for day in missing:
            start = datetime.combine(day, time.min, tzinfo=timezone.utc)
            end = start + timedelta(days=1)
            # The lock serialises two workers creating the same partition,
            # which would otherwise fail on the catalog's unique index.
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"{schema}.{partition_name(day)}"])
            cursor.execute(
                f'CREATE TABLE IF NOT EXISTS "{partition_name(day)}" '
                "PARTITION OF telemetry_reading FOR VALUES FROM (%s) TO (%s)",
                [start, end],
            )
            logger.debug("Ensured partition %s in schema %s", partition_name(day), schema)
    # A rolled-back transaction takes its new partitions with it, so they
    # count as known only once committed.
    transaction.on_commit(lambda: known.update(missing))


def ensure_partitions_ahead(today=None, days_ahead=None):
    """Create partitions from yesterday up to ``days_ahead`` days after today."""
    today = today or datetime.now(timezone.utc).date()
    days_ahead = settings.TELEMETRY_PARTITIONS_AHEAD_DAYS if days_ahead is None else days_ahead
    ensure_partitions(today + timedelta(days=offset) for offset in range(-1, days_ahead + 1))


def forget_known_partitions(schema):
    """Drop the in-process record of the schema's partitions, so the next ingest checks them again."""
    _known.pop(schema, None)


def days_between(first: date, last: date):
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
