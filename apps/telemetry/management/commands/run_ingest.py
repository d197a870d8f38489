import gc
import json
import logging
import os
import signal
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.telemetry import intake

logger = logging.getLogger("apps.telemetry.intake")


class Command(BaseCommand):
    help = (
        "Store the samples that pollers queue in the intake stream, until SIGTERM or Ctrl-C "
        "(both finish the current batch first)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--once", action="store_true",
            help="Store the entries there are now, including those idle longer than the claim idle time, then exit.",
        )
        parser.add_argument(
            "--name", default=None,
            help="Consumer name in the Redis consumer group (default: <hostname>:<pid>).",
        )
        parser.add_argument(
            "--block-ms", type=int, default=200,
            help=f"Milliseconds one read waits for new entries (1 to {intake.MAX_BLOCK_MS}, default: 200).",
        )
        parser.add_argument(
            "--max-samples", type=int, default=20000,
            help="Samples at which a batch is stored without waiting for more (default: 20000).",
        )
        parser.add_argument(
            "--claim-idle", type=float, default=None,
            help="Seconds an entry read by another consumer may stay unacknowledged before this one takes it over, "
            "0 to 86400 (default: THERMACORE_INTAKE_CLAIM_IDLE_SECONDS). 0 also takes entries from consumers that "
            "are still storing them, which stores them twice (ingest keeps one row): use it only when no other runs.",
        )
        parser.add_argument(
            "--backlog", action="store_true",
            help="Print the stream's backlog (length, pending, oldest entry age in s, dead letters) as JSON and exit.",
        )

    def handle(self, *args, **options):
        if options["backlog"]:
            try:
                self.stdout.write(json.dumps(intake.backlog()))
            except redis.RedisError as exc:
                raise CommandError(
                    f"Cannot read the intake stream at {_redacted(settings.TELEMETRY_SPOOL_URL)}: {exc}. "
                    "Check that Redis runs and THERMACORE_SPOOL_URL points to it."
                ) from None
            return
        name = options["name"] or f"{socket.gethostname()}:{os.getpid()}"
        try:
            consumer = intake.IntakeConsumer(
                name,
                block_ms=options["block_ms"],
                max_samples=options["max_samples"],
                claim_idle_seconds=options["claim_idle"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None

        stop = threading.Event()
        received = []

        # Only records the signal: logging from a handler could interleave with a record being written.
        def request_stop(signum, frame):
            received.append(signal.Signals(signum).name)
            stop.set()

        previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
        # Each batch allocates a sample per reading, and those allocations start garbage collections.
        # Freezing the objects that exist at start keeps those collections from walking them again.
        gc.collect()
        gc.freeze()
        logger.info(
            "Intake consumer %s started on stream %s of %s (group %s%s)",
            name, intake.STREAM_KEY, _redacted(settings.TELEMETRY_SPOOL_URL), intake.GROUP, ", once" if options["once"] else "",
        )
        try:
            totals = consumer.run(stop, once=options["once"])
        finally:
            # call_command runs this inside other programs (tests, shells), whose handlers come back.
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        try:
            membership = "left the group" if consumer.leave_group() else "stays in the group with pending entries"
        except Exception:
            # Leaving the group only tidies XINFO CONSUMERS, and the entries are safe either way.
            logger.exception("Intake consumer %s: leaving the consumer group failed", name)
            membership = "stays in the group, because leaving it failed"
        logger.info(
            "Intake consumer %s stopped (%s): %d entries, %d samples stored, %d spooled, %d duplicates, %d rejected, "
            "%d dropped, %d dead letters; %s",
            name, received[0] if received else "stream drained", totals.entries, totals.stored, totals.spooled, totals.duplicates, totals.rejected,
            totals.dropped, totals.dead_letters,
            membership,
        )


def _redacted(url):
    """Return ``url`` without its password, for the log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))
