"""Latest value per sensor, kept in Redis for dashboards.

One hash per tenant schema maps a sensor id to "epoch_ms|value|quality". A
Lua script replaces a field only with a newer timestamp, so a late reading
never overwrites a newer live value even when workers race.
"""

import logging
from datetime import UTC, datetime
from functools import cache

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

# ARGV[1] contains one "sensor_id=entry" line per sensor, and the reply lists the
# updated sensor ids comma-separated. Two strings instead of one argument and
# one reply element per sensor cut the client's encoding and parsing, which
# took most of the time for batches of thousands of sensors.
_SET_IF_NEWER = """
local updated = {}
for field, entry in string.gmatch(ARGV[1], '([^=\\n]+)=([^\\n]*)') do
    local current = redis.call('HGET', KEYS[1], field)
    local newer = true
    if current then
        local current_ms = tonumber(string.match(current, '^(%-?%d+)|'))
        local entry_ms = tonumber(string.match(entry, '^(%-?%d+)|'))
        newer = entry_ms > current_ms
    end
    if newer then
        redis.call('HSET', KEYS[1], field, entry)
        table.insert(updated, field)
    end
end
return table.concat(updated, ',')
"""


@cache
def get_client():
    return redis.Redis.from_url(settings.REDIS_URL)


@cache
def _script():
    return get_client().register_script(_SET_IF_NEWER)


def cache_key(schema):
    return f"thermacore:{schema}:latest"


def _encode(sample):
    epoch_ms = int(sample.time.timestamp() * 1000)
    value = "" if sample.value is None else repr(float(sample.value))
    return f"{epoch_ms}|{value}|{int(sample.quality)}"


def store_latest(schema, samples):
    """Store the newest of ``samples`` per sensor; return the ids of sensors whose live value changed."""
    newest = {}
    for sample in samples:
        current = newest.get(sample.sensor_id)
        if current is None or sample.time > current.time:
            newest[sample.sensor_id] = sample
    if not newest:
        return set()
    lines = "\n".join(f"{sensor_id}={_encode(sample)}" for sensor_id, sample in newest.items())
    updated = _script()(keys=[cache_key(schema)], args=[lines])
    return {int(field) for field in updated.split(b",") if field}


def get_latest(schema, sensor_ids):
    """Return {sensor_id: (time, value, quality)} for the sensors that have a cached value."""
    sensor_ids = list(sensor_ids)
    if not sensor_ids:
        return {}
    raw = get_client().hmget(cache_key(schema), [str(sensor_id) for sensor_id in sensor_ids])
    latest = {}
    for sensor_id, entry in zip(sensor_ids, raw):
        if entry is None:
            continue
        epoch_ms, value, quality = entry.decode().split("|")
        latest[sensor_id] = (
            datetime.fromtimestamp(int(epoch_ms) / 1000, tz=UTC),
            float(value) if value else None,
            int(quality),
        )
    return latest


def clear_latest(schema):
    get_client().delete(cache_key(schema))
