import signal

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError

from apps.protocols.gateway import Gateway


class Command(BaseCommand):
    help = (
        "Keep the subscription connections (MQTT, OPC UA, DNP3) of every tenant open and store what they deliver, "
        "until SIGTERM or Ctrl-C."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--heartbeat", type=float, default=10.0,
            help="Seconds between updates of device status and last_seen (default: 10).",
        )
        parser.add_argument(
            "--reload", type=float, default=30.0,
            help="Seconds between checks for added, changed or removed devices (default: 30).",
        )
        parser.add_argument(
            "--max-backoff", type=float, default=None,
            help="Longest wait in seconds before reconnecting a failed connection "
            "(default: THERMACORE_MAX_BACKOFF_SECONDS).",
        )

    def handle(self, *args, **options):
        for name in ("heartbeat", "reload"):
            if options[name] <= 0:
                raise CommandError(f"Invalid --{name} {options[name]}. Pass a number of seconds greater than 0.")
        if options["max_backoff"] is not None and options["max_backoff"] < 1:
            raise CommandError(f"Invalid --max-backoff {options['max_backoff']}. Pass 1 second or more.")
        gateway = Gateway(
            heartbeat_interval=options["heartbeat"],
            reload_interval=options["reload"],
            max_backoff=options["max_backoff"],
        )

        # Signal handlers belong to the main thread; async_to_sync runs the loop in another one
        # and keeps the main thread free for the gateway's database calls.
        def stop(signum, frame):
            gateway.request_stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        async_to_sync(gateway.run)()
