"""The intake stream: a durable queue of samples between the pollers and the ingest processes.

Pollers append each batch to one Redis stream with ``enqueue`` (XADD, a
compact binary encoding), so that a poll worker does only the protocol work.
``manage.py run_ingest`` processes read the stream in the consumer group
``ingest``, call ``ingest`` once per schema per batch, and XACK and XDEL the
entries only after that call has returned. An entry therefore leaves the
stream only once its samples are stored, rejected with a reason, or spooled by
ingest. A consumer that dies leaves its entries pending, and another takes
them over with XAUTOCLAIM after TELEMETRY_INTAKE_CLAIM_IDLE_SECONDS. Ingest is
idempotent on sensor and time, so an entry processed twice stores each reading
once.

The stream is never trimmed, and it is as durable as the Redis behind
TELEMETRY_SPOOL_URL, so production runs that Redis with ``appendonly yes``.
"""

import logging
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from apps.sensors.quality import Quality
from apps.sensors.samples import Sample, SampleRun, count_samples, expand_samples
from apps.tenants.models import Tenant

from .ingest import ingest

logger = logging.getLogger(__name__)

STREAM_KEY = "thermacore:intake"
DEAD_LETTER_KEY = "thermacore:intake:dead"
GROUP = "ingest"

# Payload layout, little-endian: version (uint8), count n (uint32), then n sensor ids (int64),
# n times in microseconds since 1970-01-01 UTC (int64), n values (float64), n qualities (uint8)
# and n has-value flags (uint8). A flag of 0 means the value is None.
FORMAT_VERSION = 1
_HEADER = struct.Struct("<BI")
_BYTES_PER_SAMPLE = 8 + 8 + 8 + 1 + 1
# The errors struct.pack and the time arithmetic raise for a field the layout cannot carry.
_UNPACKABLE = (TypeError, ValueError, OverflowError, AttributeError, struct.error)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_TIME = struct.Struct("<q")
_GOOD_QUALITY = bytes([Quality.GOOD])
_HAS_VALUE = b"\x01"

# Entries per XREADGROUP or XAUTOCLAIM round trip.
READ_COUNT = 500
# Attempts at ingesting an entry whose ingest raises an unexpected error before it goes to the dead letters.
MAX_INGEST_ATTEMPTS = 5
# Seconds a schema found in PostgreSQL is trusted before it is checked again.
SCHEMA_CHECK_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 30.0
MAX_BLOCK_MS = 5000


# Seconds a producer stores its batches directly after an XADD failed, before it tries the stream again.
PRODUCER_PAUSE_SECONDS = 30.0
_producer_paused_until = 0.0


@cache
def get_client():
    # The socket timeout must exceed the longest XREADGROUP block (MAX_BLOCK_MS), or a blocked read would time out.
    return redis.Redis.from_url(settings.TELEMETRY_SPOOL_URL, socket_timeout=10, socket_connect_timeout=5)


@cache
def get_producer_client():
    # A hung Redis delays a poller's XADD by at most this timeout, after which the batch is stored directly.
    return redis.Redis.from_url(settings.TELEMETRY_SPOOL_URL, socket_timeout=2, socket_connect_timeout=2)


class DecodeError(ValueError):
    """An intake entry that is not a valid encoding of samples."""


# Encoding -------------------------------------------------------------------


def encode_samples(samples):
    """Return the binary payload of ``samples``, a list of Samples and SampleRuns.

    Raises one of TypeError, ValueError, OverflowError, AttributeError or
    struct.error when a field does not fit the layout. Examples are a sensor id
    that is no int64, a time that is no datetime, a value that is no float or
    a quality outside 0-255. A naive time is taken as UTC, as ingest does.
    """
    # One list of byte strings per column of the layout, filled chunk by chunk in the order of ``samples``.
    columns = ([], [], [], [], [])
    count = 0
    start = 0
    for position, item in enumerate(samples):
        if type(item) is SampleRun:
            count += _encode_singles(samples[start:position], columns)
            count += _encode_run(item, columns)
            start = position + 1
    count += _encode_singles(samples[start:] if start else samples, columns)
    return _HEADER.pack(FORMAT_VERSION, count) + b"".join(b"".join(column) for column in columns)


def _encode_singles(samples, columns):
    """Append the columns of ``samples`` (Samples only) to ``columns``; return how many there were."""
    count = len(samples)
    if not count:
        return 0
    # Samples are named tuples, so zip() turns them into columns in C.
    fields = tuple(zip(*samples))
    if len(fields) != 4:
        raise ValueError(f"samples have {len(fields)} fields instead of 4 (sensor, time, value, quality)")
    sensor_ids, when_column, values, qualities = fields
    times = []
    last_time = last_micros = None
    for when in when_column:
        # The samples of one Modbus block share one datetime object, so the conversion runs once per block.
        if when is not last_time:
            last_micros = _micros(when)
            last_time = when
        times.append(last_micros)
    sensor_column, time_column, value_column, quality_column, flag_column = columns
    sensor_column.append(struct.pack(f"<{count}q", *sensor_ids))
    time_column.append(struct.pack(f"<{count}q", *times))
    value_column.append(struct.pack(f"<{count}d", *[0.0 if value is None else value for value in values]))
    quality_column.append(struct.pack(f"<{count}B", *qualities))
    flag_column.append(struct.pack(f"<{count}B", *[value is not None for value in values]))
    return count


def _encode_run(run, columns):
    """Append the columns of one SampleRun (good values at one time) to ``columns``; return its count."""
    count = len(run.values)
    if len(run.sensor_ids) != count or len(run.sensor_id_bytes) != 8 * count:
        raise ValueError(
            f"invalid SampleRun: {len(run.sensor_ids)} sensor ids, {count} values and {len(run.sensor_id_bytes)} id bytes;"
            " expected one value and 8 id bytes per sensor"
        )
    sensor_column, time_column, value_column, quality_column, flag_column = columns
    sensor_column.append(run.sensor_id_bytes)
    time_column.append(_TIME.pack(_micros(run.time)) * count)
    value_column.append(struct.pack(f"<{count}d", *run.values))
    quality_column.append(_GOOD_QUALITY * count)
    flag_column.append(_HAS_VALUE * count)
    return count


def _micros(when):
    """Return microseconds since the epoch of ``when``; a naive time is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - EPOCH) // _MICROSECOND


def decode_samples(payload):
    """Return the samples of a payload from ``encode_samples``, with times in UTC. Raises DecodeError if it is invalid."""
    if len(payload) < _HEADER.size:
        raise DecodeError(f"payload of {len(payload)} bytes is shorter than the {_HEADER.size}-byte header")
    version, count = _HEADER.unpack_from(payload)
    if version != FORMAT_VERSION:
        raise DecodeError(f"format version {version} is unknown; this process reads version {FORMAT_VERSION}")
    expected = _HEADER.size + count * _BYTES_PER_SAMPLE
    if len(payload) != expected:
        raise DecodeError(f"payload of {len(payload)} bytes does not match its count of {count} samples ({expected} bytes)")
    fields = struct.unpack_from(f"<{count}q{count}q{count}d{count}B{count}B", payload, _HEADER.size)
    sensor_ids = fields[:count]
    times = fields[count : 2 * count]
    values = fields[2 * count : 3 * count]
    qualities = fields[3 * count : 4 * count]
    flags = fields[4 * count :]
    samples = []
    last_micros = when = None
    try:
        for sensor_id, micros, value, quality, has_value in zip(sensor_ids, times, values, qualities, flags):
            # Neighbouring samples mostly share a time, so most of them reuse the last datetime.
            if micros != last_micros:
                when = EPOCH + timedelta(microseconds=micros)
                last_micros = micros
            samples.append(Sample(sensor_id, when, value if has_value else None, quality))
    except OverflowError as exc:
        raise DecodeError(f"a time is outside the range of datetime ({exc})") from None
    return samples


def _split_encodable(samples):
    """Return (samples the layout can carry, samples it cannot), with SampleRuns expanded to Samples."""
    encodable = []
    others = []
    for sample in expand_samples(samples):
        try:
            encode_samples([sample])
        except _UNPACKABLE:
            others.append(sample)
        else:
            encodable.append(sample)
    return encodable, others


# Producer -------------------------------------------------------------------


def enqueue(schema, samples):
    """Append ``samples`` (Samples and SampleRuns) of tenant ``schema`` to the intake stream as one entry.

    Samples the binary layout cannot carry (a sensor id that is no int64, a
    time that is no datetime, a value that is no number, a quality outside
    0-255) go straight to ``ingest`` in this process. Ingest rejects or stores
    them exactly as it would without the queue, and its rejections are logged
    here. While the stream's Redis is unreachable, the whole batch goes
    straight to ingest, so a Redis outage slows the poller but loses nothing.
    So do the batches of PRODUCER_PAUSE_SECONDS after an append found the
    stream at TELEMETRY_INTAKE_MAX_ENTRIES entries.
    The return value counts the samples queued (each value of a SampleRun as
    one) plus those ingest accepted or spooled directly.
    """
    if not isinstance(schema, str) or not schema:
        raise ValueError(f"Invalid schema {schema!r}. Pass the tenant's schema name.")
    samples = list(samples)
    if not samples:
        return 0
    direct = []
    try:
        payload = encode_samples(samples)
        queued = samples
    except _UNPACKABLE:
        queued, direct = _split_encodable(samples)
        payload = encode_samples(queued) if queued else None

    global _producer_paused_until
    if payload is not None and time.monotonic() < _producer_paused_until:
        return _ingest_directly(schema, samples)
    if payload is not None:
        try:
            pipeline = get_producer_client().pipeline(transaction=False)
            pipeline.xadd(STREAM_KEY, {"schema": schema, "samples": payload})
            pipeline.xlen(STREAM_KEY)
            _, length = pipeline.execute()
        except redis.RedisError as exc:
            _producer_paused_until = time.monotonic() + PRODUCER_PAUSE_SECONDS
            logger.warning(
                "Schema %s: appending %d samples to the intake stream failed (%s); storing them and the "
                "batches of the next %.0f s directly",
                schema, count_samples(samples), exc, PRODUCER_PAUSE_SECONDS,
            )
            return _ingest_directly(schema, samples)
    if payload is not None and length >= settings.TELEMETRY_INTAKE_MAX_ENTRIES:
        # Without a bound, a stream that no run_ingest drains would grow until Redis runs out of memory.
        _producer_paused_until = time.monotonic() + PRODUCER_PAUSE_SECONDS
        logger.warning(
            "Schema %s: the intake stream contains %d entries (THERMACORE_INTAKE_MAX_ENTRIES is %d), so run_ingest "
            "is not keeping up or not running; storing the batches of the next %.0f s directly",
            schema, length, settings.TELEMETRY_INTAKE_MAX_ENTRIES, PRODUCER_PAUSE_SECONDS,
        )
    accepted_count = count_samples(queued) if payload is not None else 0
    if direct:
        accepted_count += _ingest_directly(schema, direct)
    return accepted_count


def _ingest_directly(schema, samples):
    result = ingest(schema, expand_samples(samples))
    if result.rejected:
        first = result.rejected[0]
        logger.warning(
            "Schema %s: %d samples rejected, first of sensor %r: %s",
            schema, len(result.rejected), first.sensor_id, first.reason,
        )
    return result.accepted + result.spooled + result.duplicates


# Monitoring -----------------------------------------------------------------


def backlog():
    """Return the intake stream's backlog for monitoring.

    Keys: ``length`` (entries not yet acknowledged, read or not), ``pending``
    (entries read by a consumer but not yet acknowledged), ``oldest_age_seconds``
    (age of the oldest entry by the Redis clock, 0.0 when empty) and
    ``dead_letters`` (entries in the dead-letter stream).
    """
    client = get_client()
    length = client.xlen(STREAM_KEY)
    try:
        pending = client.xpending(STREAM_KEY, GROUP)["pending"]
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        pending = 0
    oldest_age = 0.0
    oldest = client.xrange(STREAM_KEY, count=1)
    if oldest:
        seconds, microseconds = client.time()
        now_ms = seconds * 1000 + microseconds // 1000
        oldest_age = max(0.0, (now_ms - _entry_ms(oldest[0][0])) / 1000)
    return {
        "length": length,
        "pending": pending,
        "oldest_age_seconds": oldest_age,
        "dead_letters": client.xlen(DEAD_LETTER_KEY),
    }


def _entry_ms(entry_id):
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    return int(entry_id.split("-", 1)[0])


# Consumer -------------------------------------------------------------------


@dataclass
class _Entry:
    entry_id: bytes
    fields: dict | None
    schema: str | None = None
    samples: list | None = None
    error: str | None = None

    @property
    def label(self):
        return self.entry_id.decode()


def _parse(entry_id, fields):
    """Return the _Entry of a stream entry, with ``error`` set when it cannot be decoded."""
    entry = _Entry(entry_id, fields)
    if fields is None:
        # XREADGROUP returns the id alone for a pending entry that was deleted meanwhile.
        return entry
    schema = fields.get(b"schema")
    payload = fields.get(b"samples")
    if schema is None or payload is None:
        entry.error = f"fields {sorted(name.decode(errors='replace') for name in fields)} lack 'schema' or 'samples'"
        return entry
    try:
        entry.schema = schema.decode()
    except UnicodeDecodeError:
        entry.error = f"schema {schema!r} is not UTF-8"
        return entry
    try:
        entry.samples = decode_samples(payload)
    except DecodeError as exc:
        entry.error = str(exc)
    return entry


class _RetryLater(Exception):
    """Some entries of the batch failed and stay in memory for another attempt after a back-off."""


@dataclass
class IntakeTotals:
    """Counts of one consumer since it started."""

    entries: int = 0
    stored: int = 0
    spooled: int = 0
    duplicates: int = 0
    rejected: int = 0
    dropped: int = 0
    dead_letters: int = 0


MAX_CLAIM_IDLE_SECONDS = 86400


def _check_options(name, block_ms, max_samples, flush_ms, claim_idle_seconds):
    if not isinstance(name, str) or not name:
        raise ValueError(f"Invalid consumer name {name!r}. Pass a non-empty name, e.g. '<hostname>:<pid>'.")
    if not 1 <= block_ms <= MAX_BLOCK_MS:
        raise ValueError(f"Invalid block_ms {block_ms}. Pass 1 to {MAX_BLOCK_MS} milliseconds.")
    if max_samples < 1:
        raise ValueError(f"Invalid max_samples {max_samples}. Pass 1 or more.")
    if flush_ms < 1:
        raise ValueError(f"Invalid flush_ms {flush_ms}. Pass 1 millisecond or more.")
    # XAUTOCLAIM takes the idle time in whole milliseconds as a 64-bit integer; a day is more than enough.
    if not (isinstance(claim_idle_seconds, (int, float)) and 0 <= claim_idle_seconds <= MAX_CLAIM_IDLE_SECONDS):
        raise ValueError(
            f"Invalid claim idle time {claim_idle_seconds!r} s. Pass 0 to {MAX_CLAIM_IDLE_SECONDS} seconds "
            "(THERMACORE_INTAKE_CLAIM_IDLE_SECONDS or --claim-idle)."
        )


class IntakeConsumer:
    """Reads the intake stream in consumer group ``ingest`` and stores each entry's samples through ``ingest``.

    A batch collects entries until it contains ``max_samples`` samples or its
    first entry is ``flush_ms`` old. Entries stay pending in Redis, and in
    memory, until their ingest call has returned. Redis and PostgreSQL
    connection errors are logged and retried after a back-off of 1, 2, 4 ...
    up to 30 s.
    """

    def __init__(self, name, *, block_ms=200, max_samples=20000, flush_ms=200, claim_idle_seconds=None):
        if claim_idle_seconds is None:
            claim_idle_seconds = settings.TELEMETRY_INTAKE_CLAIM_IDLE_SECONDS
        _check_options(name, block_ms, max_samples, flush_ms, claim_idle_seconds)

        self.name = name
        self.block_ms = int(block_ms)
        self.max_samples = max_samples
        self.flush_seconds = flush_ms / 1000
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        # A claim round every half idle time finds an abandoned entry within 1.5 idle times.
        self.claim_interval = max(claim_idle_seconds / 2, 0.0)
        self.totals = IntakeTotals()

        # Batch state: entries being processed, entries read beyond the last batch, and ids of stored
        # entries whose XACK failed.
        self._unfinished = []
        self._carried = []
        self._unacknowledged = []
        self._attempts = {}
        self._group_ready = False
        self._own_pending_read = False
        self._next_claim_at = 0.0
        self._schemas_checked_at = {}
        self._failures = 0

    # The loop ---------------------------------------------------------------

    def run(self, stop=None, *, once=False):
        """Process batches until ``stop`` (a threading.Event) is set, or with ``once`` until the stream is drained.

        After a stop, the entries already read are processed, but no new ones.
        Entries whose processing failed stay pending in Redis for a later run or
        another consumer. Returns the totals.
        """
        while True:
            stopping = stop is not None and stop.is_set()
            if stopping and not self._carried:
                break
            try:
                processed = self.run_batch(once=once, stop=stop)
            except (redis.RedisError, OperationalError, InterfaceError, _RetryLater) as exc:
                if stopping:
                    logger.warning(
                        "Intake consumer %s: %s: %s while stopping; %d entries stay pending",
                        self.name, type(exc).__name__, str(exc).strip(), len(self._unfinished) + len(self._carried),
                    )
                    break
                self._back_off(exc, stop)
                continue
            self._failures = 0
            if once and not processed and not self._unfinished and not self._carried and not self._unacknowledged:
                break
        return self.totals

    def run_batch(self, *, once=False, stop=None):
        """Collect and process one batch; return the number of entries it processed."""
        self._acknowledge_leftovers()
        if not self._unfinished:
            self._ensure_group()
            self._unfinished = self._collect(once=once, stop=stop)
            self.totals.entries += len(self._unfinished)
        if not self._unfinished:
            return 0
        return self._process()

    def _back_off(self, exc, stop):
        delay = min(2.0 ** self._failures, MAX_BACKOFF_SECONDS)
        self._failures += 1
        logger.warning(
            "Intake consumer %s: %s: %s; retrying in %.0f s (attempt %d, %d entries unfinished, first %s)",
            self.name, type(exc).__name__, str(exc).strip(), delay, self._failures,
            len(self._unfinished), self._unfinished[0].label if self._unfinished else "none",
        )
        if isinstance(exc, redis.RedisError):
            # NOGROUP after a Redis restart without its data: create the group again on the next attempt.
            self._group_ready = False
            # Entries read before the error stay pending on this consumer but left memory; read them again.
            self._own_pending_read = False
        if isinstance(exc, (OperationalError, InterfaceError)):
            connection.close_if_unusable_or_obsolete()
        if stop is None:
            time.sleep(delay)
        else:
            stop.wait(delay)

    # Reading ----------------------------------------------------------------

    def _ensure_group(self):
        if self._group_ready:
            return
        try:
            # Id 0, so that entries enqueued before the first consumer started are read too.
            get_client().xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
            logger.info("Created consumer group %s on stream %s", GROUP, STREAM_KEY)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _collect(self, *, once, stop):
        """Return the entries of the next batch, at most ``max_samples`` samples unless one entry contains more.

        Entries carried over from the last read come first, then this
        consumer's own and claimed pending entries, then new ones. Entries read
        beyond ``max_samples`` are carried over to the next batch.
        """
        entries = self._carried
        self._carried = []
        if stop is None or not stop.is_set():
            seen = {entry.entry_id for entry in entries}
            for entry in self._read_own_pending() + self._claim_abandoned(force=once):
                # With a claim idle time of 0, XAUTOCLAIM also returns entries already read by this consumer.
                if entry.entry_id not in seen:
                    seen.add(entry.entry_id)
                    entries.append(entry)
            self._read_new(entries, once=once, stop=stop)
        return self._take_batch(entries)

    def _read_new(self, entries, *, once, stop):
        """Append new entries to ``entries`` until they contain ``max_samples`` samples, none wait, or ``flush_ms`` passed."""
        sample_count = sum(len(entry.samples or ()) for entry in entries)
        started = time.monotonic()
        client = get_client()
        samples_per_entry = 1
        while sample_count < self.max_samples:
            if stop is not None and stop.is_set():
                break
            if entries:
                if (time.monotonic() - started) >= self.flush_seconds:
                    break
                # Take only what is already there: waiting for more would delay the live values,
                # and under load the entries pile up while ingest runs, so batches grow anyway.
                block = None
            else:
                block = self.block_ms
            # Ask for about as many entries as the batch has room for, judged by the last read.
            count = max(1, min(READ_COUNT, (self.max_samples - sample_count) // samples_per_entry))
            response = client.xreadgroup(
                GROUP, self.name, {STREAM_KEY: ">"}, count=count, block=None if once else block
            )
            read = [_parse(entry_id, fields) for _stream, batch in response or () for entry_id, fields in batch]
            if not read:
                break
            entries.extend(read)
            read_samples = sum(len(entry.samples or ()) for entry in read)
            sample_count += read_samples
            samples_per_entry = max(1, read_samples // len(read))

    def _take_batch(self, entries):
        """Return the first entries up to ``max_samples`` samples (at least one) and carry the rest over."""
        sample_count = 0
        for index, entry in enumerate(entries):
            sample_count += len(entry.samples or ())
            if sample_count > self.max_samples and index > 0:
                self._carried = entries[index:]
                return entries[:index]
        return entries

    def _read_own_pending(self):
        """Return this consumer's entries left pending by an earlier run under the same name."""
        if self._own_pending_read:
            return []
        response = get_client().xreadgroup(GROUP, self.name, {STREAM_KEY: "0"}, count=READ_COUNT)
        entries = [_parse(entry_id, fields) for _stream, batch in response or () for entry_id, fields in batch]
        if entries:
            logger.info("Intake consumer %s: taking up %d of its own pending entries", self.name, len(entries))
        else:
            self._own_pending_read = True
        return entries

    def _claim_abandoned(self, *, force):
        """Return entries pending on other consumers for longer than the claim idle time, now claimed by this one."""
        now = time.monotonic()
        if not force and now < self._next_claim_at:
            return []
        self._next_claim_at = now + self.claim_interval
        next_id, claimed, *_deleted = get_client().xautoclaim(
            STREAM_KEY, GROUP, self.name, self.claim_idle_ms, start_id="0-0", count=READ_COUNT
        )
        if next_id not in (b"0-0", "0-0"):
            # More are idle; claim them in the next round instead of waiting a whole interval.
            self._next_claim_at = now
        entries = [_parse(entry_id, fields) for entry_id, fields in claimed]
        if entries:
            # The claim cannot tell a stopped consumer's entries from those a live one is still storing.
            logger.warning(
                "Intake consumer %s: claimed %d pending entries idle for at least %d ms, first %s; their "
                "consumer stopped, or stores slower than the claim idle time",
                self.name, len(entries), self.claim_idle_ms, entries[0].label,
            )
        return entries

    # Processing -------------------------------------------------------------

    def _process(self):
        """Ingest the unfinished entries once per schema and acknowledge each schema's entries after its ingest returned."""
        entries = self._unfinished
        invalid = [entry for entry in entries if entry.error is not None]
        for entry in invalid:
            self._dead_letter([entry], entry.error)
        empty = [entry for entry in entries if entry.fields is None]
        if empty:
            self._acknowledge(empty)
        by_schema = {}
        for entry in entries:
            if entry.error is None and entry.fields is not None:
                by_schema.setdefault(entry.schema, []).append(entry)
        self._unfinished = [entry for group in by_schema.values() for entry in group]

        if not connection.in_atomic_block:
            # A long-running process must drop connections older than CONN_MAX_AGE or broken ones itself.
            close_old_connections()
        existing = self._existing_schemas(by_schema)
        failed = []
        for schema, group in by_schema.items():
            if schema not in existing:
                count = sum(len(entry.samples) for entry in group)
                logger.warning(
                    "Intake consumer %s: schema %s does not exist; dropping %d entries with %d samples, first %s",
                    self.name, schema, len(group), count, group[0].label,
                )
                self.totals.dropped += count
                self._acknowledge(group)
            elif not self._ingest_group(schema, group):
                failed.extend(group)
                continue
            self._release(group)
        if failed:
            raise _RetryLater(f"ingest failed for {len(failed)} entries, first {failed[0].label}")
        return len(entries)

    def _ingest_group(self, schema, group):
        """Ingest one schema's entries in one call and acknowledge them. Returns False when they stay for a retry."""
        samples = [sample for entry in group for sample in entry.samples]
        try:
            result = ingest(schema, samples)
        except (redis.RedisError, OperationalError, InterfaceError):
            # PostgreSQL and the spool's Redis both failed, or the connection broke outside the write.
            raise
        except Exception as exc:
            logger.exception(
                "Intake consumer %s: ingest of schema %s failed for entries %s",
                self.name, schema, ", ".join(entry.label for entry in group),
            )
            # The tenant may have been deleted since its schema was checked.
            self._schemas_checked_at.pop(schema, None)
            exhausted = [entry for entry in group if self._count_attempt(entry) >= MAX_INGEST_ATTEMPTS]
            if exhausted:
                self._dead_letter(exhausted, f"ingest failed {MAX_INGEST_ATTEMPTS} times: {type(exc).__name__}: {exc}")
                self._release(exhausted)
            return False
        if result.rejected:
            first = result.rejected[0]
            logger.warning(
                "Schema %s: %d queued samples rejected, first of sensor %r: %s",
                schema, len(result.rejected), first.sensor_id, first.reason,
            )
        self.totals.stored += result.accepted
        self.totals.spooled += result.spooled
        self.totals.duplicates += result.duplicates
        self.totals.rejected += len(result.rejected)
        logger.debug(
            "Intake consumer %s: schema %s, %d entries: %d stored, %d spooled, %d duplicates, %d rejected",
            self.name, schema, len(group), result.accepted, result.spooled, result.duplicates, len(result.rejected),
        )
        self._acknowledge(group)
        return True

    def _count_attempt(self, entry):
        attempts = self._attempts.get(entry.entry_id, 0) + 1
        self._attempts[entry.entry_id] = attempts
        return attempts

    def _release(self, group):
        released = {entry.entry_id for entry in group}
        self._unfinished = [entry for entry in self._unfinished if entry.entry_id not in released]
        for entry_id in released:
            self._attempts.pop(entry_id, None)

    def _existing_schemas(self, by_schema):
        """Return the schemas of ``by_schema`` that have a tenant and a PostgreSQL schema."""
        now = time.monotonic()
        checked_at = self._schemas_checked_at
        unknown = [
            schema for schema in by_schema
            if schema not in checked_at or now - checked_at[schema] >= SCHEMA_CHECK_SECONDS
        ]
        if unknown:
            with connection.cursor() as cursor:
                cursor.execute(
                    f"SELECT t.schema_name FROM {connection.ops.quote_name(Tenant._meta.db_table)} t "
                    "JOIN pg_namespace n ON n.nspname = t.schema_name WHERE t.schema_name = ANY(%s)",
                    [unknown],
                )
                found = {row[0] for row in cursor.fetchall()}
            for schema in unknown:
                if schema in found:
                    checked_at[schema] = now
                else:
                    checked_at.pop(schema, None)
        return {schema for schema in by_schema if schema in checked_at}

    # Acknowledging ----------------------------------------------------------

    def _acknowledge(self, entries):
        """XACK and XDEL ``entries`` in one transaction. On a Redis error, keep their ids to try again before the next batch."""
        entry_ids = [entry.entry_id for entry in entries]
        try:
            self._ack_and_delete(entry_ids)
        except redis.RedisError:
            # Their samples are stored already, so only the acknowledgement is retried. A redelivery
            # after a crash stores nothing twice.
            self._unacknowledged.extend(entry_ids)
            self._release(entries)
            raise

    def _acknowledge_leftovers(self):
        if self._unacknowledged:
            self._ack_and_delete(self._unacknowledged)
            self._unacknowledged = []

    @staticmethod
    def _ack_and_delete(entry_ids):
        pipe = get_client().pipeline(transaction=True)
        pipe.xack(STREAM_KEY, GROUP, *entry_ids)
        pipe.xdel(STREAM_KEY, *entry_ids)
        pipe.execute()

    def _dead_letter(self, entries, reason):
        """Move ``entries`` to the dead-letter stream with ``reason``, so that they no longer block the stream."""
        client = get_client()
        pipe = client.pipeline(transaction=True)
        for entry in entries:
            logger.error("Intake consumer %s: entry %s moved to %s: %s", self.name, entry.label, DEAD_LETTER_KEY, reason)
            pipe.xadd(DEAD_LETTER_KEY, {**entry.fields, "entry_id": entry.entry_id, "reason": reason, "consumer": self.name})
        entry_ids = [entry.entry_id for entry in entries]
        pipe.xack(STREAM_KEY, GROUP, *entry_ids)
        pipe.xdel(STREAM_KEY, *entry_ids)
        pipe.execute()
        self.totals.dead_letters += len(entries)

    # Shutdown ---------------------------------------------------------------

    def leave_group(self):
        """Delete this consumer from the group when nothing is pending on it, and return whether it did.

        XGROUP DELCONSUMER drops a consumer's pending entries, so a consumer
        with pending entries stays for XAUTOCLAIM to find them.
        """
        client = get_client()
        try:
            pending = client.xpending_range(STREAM_KEY, GROUP, min="-", max="+", count=1, consumername=self.name)
            if pending:
                return False
            client.xgroup_delconsumer(STREAM_KEY, GROUP, self.name)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return False
        return True


def consume(consumer_name, *, block_ms=200, max_samples=20000, stop=None, once=False, claim_idle_seconds=None):
    """Run an IntakeConsumer named ``consumer_name`` until ``stop`` is set (or, with ``once``, the stream is drained).

    Returns its IntakeTotals.
    """
    consumer = IntakeConsumer(
        consumer_name, block_ms=block_ms, max_samples=max_samples, claim_idle_seconds=claim_idle_seconds
    )
    return consumer.run(stop, once=once)
