"""Durable spool of samples that PostgreSQL could not take, in a Redis stream per tenant schema.

When the readings write fails because PostgreSQL is unreachable or slower
than TELEMETRY_WRITE_TIMEOUT_SECONDS, ``ingest`` appends the batch to the
stream (XADD) instead of losing it. ``replay`` feeds the entries back to
``ingest`` oldest first and deletes each entry only after its ingest has
committed. Ingest is idempotent on sensor and time, so an entry replayed
twice (a replay killed between commit and XDEL, or two replays at once)
still stores each reading once.

The stream is only as durable as the Redis server behind
TELEMETRY_SPOOL_URL: run it with the append-only file (``appendonly yes``)
so that a restart keeps the spool.
"""

import json
import logging
from datetime import datetime
from functools import cache

import redis
from django.conf import settings

from apps.sensors.samples import Sample

logger = logging.getLogger(__name__)

# Entries read from the stream per round trip during a replay.
REPLAY_CHUNK = 50
# A replay holds this lock, renewed after each entry, so that parallel replays do not repeat each
# other's work. A killed replay blocks the next one for at most this many seconds.
LOCK_TIMEOUT_SECONDS = 30


@cache
def get_client():
    return redis.Redis.from_url(settings.TELEMETRY_SPOOL_URL)


def spool_key(schema):
    return f"thermacore:{schema}:spool"


def _encode(samples):
    rows = []
    for sample in samples:
        when = sample.time.isoformat() if isinstance(sample.time, datetime) else sample.time
        rows.append([sample.sensor_id, when, sample.value, sample.quality])
    # Python's json writes NaN and Infinity, so a non-finite value reaches validation unchanged.
    return json.dumps(rows)


def _decode(payload):
    samples = []
    for sensor_id, when, value, quality in json.loads(payload):
        # A time that was no datetime stays as it was, so that validation rejects it with its reason.
        if isinstance(when, str):
            try:
                when = datetime.fromisoformat(when)
            except ValueError:
                pass
        samples.append(Sample(sensor_id, when, value, quality))
    return samples


def spool(schema, samples):
    """Append ``samples`` to the schema's spool as one entry; return the entry id.

    Raises redis.RedisError when Redis is unreachable too, so that the
    caller reports the readings as not accepted.
    """
    entry_id = get_client().xadd(spool_key(schema), {"samples": _encode(samples)})
    return entry_id.decode()


def pending(schema):
    """Return the number of spooled entries (batches) of the schema that wait for a replay."""
    return get_client().xlen(spool_key(schema))


def replay(schema, *, on_entry=None):
    """Ingest the schema's spooled entries oldest first; return the number of entries replayed.

    Stops at the first entry whose ingest fails (PostgreSQL still away), which
    stays at the head of the stream for the next replay. ``on_entry(entry_id)``
    runs after each entry is stored and deleted.
    """
    from .ingest import ingest

    client = get_client()
    key = spool_key(schema)
    lock = client.lock(f"{key}:replay", timeout=LOCK_TIMEOUT_SECONDS, blocking=False)
    if not lock.acquire():
        logger.info("Spool replay of schema %s is already running elsewhere", schema)
        return 0
    replayed = 0
    try:
        while True:
            entries = client.xrange(key, count=REPLAY_CHUNK)
            if not entries:
                break
            for entry_id, fields in entries:
                result = ingest(schema, _decode(fields[b"samples"]), spool_on_failure=False)
                client.xdel(key, entry_id)
                replayed += 1
                lock.reacquire()
                if result.rejected:
                    logger.warning("Spooled entry %s of schema %s: %d readings rejected on replay, first: %s",
                                   entry_id.decode(), schema, len(result.rejected), result.rejected[0].reason)
                if on_entry is not None:
                    on_entry(entry_id.decode())
    finally:
        lock.release()
    if replayed:
        logger.info("Replayed %d spooled entries of schema %s", replayed, schema)
    return replayed
