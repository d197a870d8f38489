import asyncio
import logging
import signal

from django.core.management.base import BaseCommand, CommandError

from apps.protocols.simulator.faults import FAULT_KINDS, FaultInjector, parse_point_fault
from apps.protocols.simulator.plant import Plant
from apps.protocols.simulator.server import serve_plant

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Serve the simulated plant (Boiler 1, Chiller 1, Heat pump 1 on device ids 1 to 3) "
        "on Modbus TCP, and optionally OPC UA, MQTT and DNP3, until Ctrl-C or SIGTERM."
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
        for kind, text in (
            ("nan", "Serve NaN for the float point UNIT:KEY, e.g. 1:supply_temp."),
            ("stuck", "Freeze the point UNIT:KEY at its value at start-up."),
            ("drift", "Add RATE per simulated second to the point, written UNIT:KEY:RATE, e.g. 2:supply_temp:0.05."),
            ("exception", "Answer reads of the point UNIT:KEY with exception 2 (illegal data address)."),
        ):
            parser.add_argument(f"--{kind}", action="append", default=[], metavar="FAULT", help=text + " Repeatable.")
        parser.add_argument(
            "--restart-every", type=float, default=None,
            help="Seconds between restarts: every protocol server closes its connections and stops listening "
            "for --down-for seconds, and the MQTT publisher disconnects (default: no restarts).",
        )
        parser.add_argument(
            "--down-for", type=float, default=5.0, help="Seconds the server stays away at each disconnect (default: 5)."
        )
        parser.add_argument(
            "--mqtt-broker", default="", metavar="HOST:PORT",
            help="Also publish every point to this MQTT broker, e.g. 127.0.0.1:1883 (default: no MQTT).",
        )
        parser.add_argument(
            "--opcua-port", type=int, default=None,
            help="Also serve the plant over OPC UA (security mode None) on this port of --host (default: no OPC UA).",
        )
        parser.add_argument(
            "--dnp3-port", type=int, default=None,
            help="Also serve the plant as a DNP3 outstation (address 10, master 1) on this port of --host "
            "(default: no DNP3).",
        )
        parser.add_argument(
            "--mqtt-prefix", default="thermacore/sim",
            help="Topic prefix of the published points: <prefix>/<device id>/<point key> (default: thermacore/sim).",
        )

    def handle(self, *args, **options):
        if not 0 <= options["port"] <= 65535:
            raise CommandError(f"Invalid --port {options['port']}. Pass 0 to 65535.")
        if options["interval"] <= 0:
            raise CommandError(f"Invalid --interval {options['interval']}. Pass a number of seconds greater than 0.")
        try:
            faults = tuple(
                parse_point_fault(kind, text) for kind in FAULT_KINDS for text in options[kind]
            )
            FaultInjector(Plant(), faults)
        except (ValueError, KeyError) as exc:
            raise CommandError(str(exc).strip('"')) from exc
        for name in ("opcua_port", "dnp3_port"):
            if options[name] is not None and not 0 < options[name] <= 65535:
                raise CommandError(f"Invalid --{name.replace('_', '-')} {options[name]}. Pass 1 to 65535.")
        for name in ("restart_every", "down_for"):
            if options[name] is not None and options[name] <= 0:
                raise CommandError(f"Invalid --{name.replace('_', '-')} {options[name]}. Pass seconds greater than 0.")
        try:
            asyncio.run(
                self._serve(
                    host=options["host"],
                    port=options["port"],
                    update_interval=options["interval"],
                    seed=options["seed"],
                    faults=faults,
                    restart_every=options["restart_every"],
                    down_for=options["down_for"],
                    mqtt_broker=_broker_address(options["mqtt_broker"]),
                    mqtt_prefix=options["mqtt_prefix"],
                    opcua_port=options["opcua_port"],
                    dnp3_port=options["dnp3_port"],
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


def _broker_address(text):
    if not text:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise CommandError(f"Invalid --mqtt-broker {text!r}. Pass HOST:PORT, e.g. 127.0.0.1:1883.")
    return host, int(port)
