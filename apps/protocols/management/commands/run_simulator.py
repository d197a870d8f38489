import asyncio
import logging
import signal

from django.core.management.base import BaseCommand, CommandError

from apps.protocols.simulator.server import serve_plant

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Serve the simulated plant (Boiler 1, Chiller 1, Heat pump 1 on device ids 1 to 3) "
        "on Modbus TCP until Ctrl-C or SIGTERM."
    )
    # The simulator uses neither the database nor the models, so it starts without the checks.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: 127.0.0.1).")
        parser.add_argument("--port", type=int, default=5020, help="TCP port to listen on (default: 5020).")
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            help="Seconds between plant updates, also the simulated time step (default: 1.0).",
        )
        parser.add_argument(
            "--seed", type=int, default=None, help="Random seed for a repeatable plant (default: random)."
        )

    def handle(self, *args, **options):
        if not 0 <= options["port"] <= 65535:
            raise CommandError(f"Invalid --port {options['port']}. Pass 0 to 65535.")
        if options["interval"] <= 0:
            raise CommandError(f"Invalid --interval {options['interval']}. Pass a number of seconds greater than 0.")
        try:
            asyncio.run(
                self._serve(
                    host=options["host"],
                    port=options["port"],
                    update_interval=options["interval"],
                    seed=options["seed"],
                )
            )
        except OSError as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            # Without loop signal handlers (Windows), asyncio.run stops the server and then raises this on Ctrl-C.
            logger.info("Plant simulator stopped by Ctrl-C")

    async def _serve(self, **kwargs):
        task = asyncio.create_task(serve_plant(**kwargs))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self._stop, task, signum)
            except (NotImplementedError, RuntimeError):
                # Windows event loops support no signal handlers, so Ctrl-C raises KeyboardInterrupt.
                pass
        try:
            await task
        except asyncio.CancelledError:
            pass

    @staticmethod
    def _stop(task, signum):
        logger.info("Received %s, stopping the plant simulator", signal.Signals(signum).name)
        task.cancel()
