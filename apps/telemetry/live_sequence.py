"""Sequence numbers per Channels group, so that a live consumer can tell the channel layer dropped its messages.

channels_redis 4.3 drops a group message for a channel that already has
``capacity`` messages waiting, without telling sender or receiver. Every sender of
live messages therefore numbers them per group from a Redis counter, and the
consumer closes a client whose numbers have a gap (apps.dashboards.consumers).

The counters have no TTL. There is one small key per group that was ever sent
to (the units and the security group of a tenant). They start with
``thermacore:<schema>:``, so they go when the tenant is deleted.
"""

from functools import cache

import redis
from django.conf import settings


@cache
def _client(url):
    # One connection pool per process and URL, because consumers read the counters every few seconds.
    # redis-py 8 opens new connections in a forked child.
    return redis.Redis.from_url(url)


def group_seq_key(schema, group):
    return f"thermacore:{schema}:live:group-seq:{group}"


def reserve_group_seqs(schema, counts):
    """Reserve ``counts[group]`` numbers for each group in one Redis round trip; return {group: first number}.

    The numbers of a group run on from its first number without a break, so
    the sender must send exactly that many messages to the group, in order.
    """
    groups = list(counts)
    pipeline = _client(settings.REDIS_URL).pipeline(transaction=False)
    for group in groups:
        pipeline.incrby(group_seq_key(schema, group), counts[group])
    lasts = pipeline.execute()
    return {group: last - counts[group] + 1 for group, last in zip(groups, lasts)}


def current_group_seqs(schema, groups):
    """Return {group: the last number reserved so far}, 0 for a group that was never sent to."""
    if not groups:
        return {}
    values = _client(settings.REDIS_URL).mget([group_seq_key(schema, group) for group in groups])
    return {group: int(value or 0) for group, value in zip(groups, values)}
