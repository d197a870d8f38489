"""A tenant's state in Redis, deleted with the tenant and before its schema name is used again.

Redis keys carry the schema name, not the tenant's id, so a new tenant with
the schema name of a deleted one would otherwise inherit its latest values,
spooled readings, cache entries and rate-limit counters.
"""

import logging

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

# Keys deleted per SCAN page and UNLINK call.
_SCAN_BATCH = 1000


def _glob_escape(text):
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


def tenant_key_patterns(schema):
    """Return the Redis glob patterns of every key that belongs to tenant ``schema``."""
    name = _glob_escape(schema)
    key_prefix = _glob_escape(settings.CACHES["default"].get("KEY_PREFIX", ""))
    return [
        # Latest values, the readings spool stream and live-push counters (apps.telemetry, apps.dashboards).
        f"thermacore:{name}:*",
        # Django cache entries made while the tenant's schema was active (django_tenants.cache.make_key).
        f"{name}:{key_prefix}:*",
        # Rate-limit counters and ended logins name the schema inside the key, whichever schema made the cache key.
        f"*:throttle:{name}:*",
        f"*:jwt:{name}:*",
        # Channels groups of the tenant's pages and sockets ("<schema>.unit.<id>", "<schema>.sockets...").
        f"asgi:group:{name}.*",
    ]


def _redis_urls():
    urls = [settings.REDIS_URL, settings.CACHES["default"]["LOCATION"]]
    urls.append(getattr(settings, "TELEMETRY_SPOOL_URL", settings.REDIS_URL))
    urls.extend(host for host in settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts", []) if isinstance(host, str))
    return list(dict.fromkeys(urls))


def delete_tenant_keys(schema):
    """Delete every Redis key of tenant ``schema`` on each Redis the deployment uses; return how many were deleted.

    Raises redis.RedisError when a Redis server cannot be reached.
    """
    deleted = 0
    for url in _redis_urls():
        client = redis.Redis.from_url(url)
        try:
            for pattern in tenant_key_patterns(schema):
                batch = []
                for key in client.scan_iter(match=pattern, count=_SCAN_BATCH):
                    batch.append(key)
                    if len(batch) >= _SCAN_BATCH:
                        deleted += client.unlink(*batch)
                        batch = []
                if batch:
                    deleted += client.unlink(*batch)
        finally:
            client.close()
    if deleted:
        logger.info("Deleted %d Redis keys of tenant schema=%s", deleted, schema)
    return deleted
