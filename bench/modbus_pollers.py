"""Poller processes that bench/modbus_scaling.py starts against the simulated fleet.

Two pollers, each run as a process of its own so that its CPU time and RSS
can be measured apart from everything else:

- ``baseline``: one plain pymodbus ``AsyncModbusTcpClient`` per device, kept
  connected, reads the device's blocks one after another, all devices at once
  with ``asyncio.gather``, and stores nothing. It is the floor.
- ``thermacore``: ``apps.protocols.polling.poll_due_devices`` in a scratch
  tenant with one Modbus TCP device per simulated device, called once a
  second as Celery beat sends the poll task. It reads with the project's
  driver, hands every sample to the intake stream and updates device status;
  a ``manage.py run_ingest`` process that it starts stores the samples.

Both read one JSON command per line on stdin and write one JSON reply per line:
``start`` begins a poll cycle every second, ``stop`` ends it and replies with
every cycle since ``start`` (wall-clock start, duration in ms, devices polled
and failed), and ``exit`` ends the process.

    python bench/modbus_pollers.py baseline --devices 100 --port 21700
"""

import argparse
import asyncio
import cProfile
import json
import logging
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from modbus_fleet import BLOCKS, DEVICE_ID, REGISTERS_PER_DEVICE, device_host

logger = logging.getLogger("modbus_pollers")

CYCLE_SECONDS = 1.0
DEVICE_TIMEOUT_SECONDS = 2.0
SCHEMA = "bench_modbus_scaling"
PROJECT_DIR = Path(__file__).resolve().parent.parent


def take_reply_channel():
    """Keep the real stdout for replies and send everything else printed (e.g. migrate output) to stderr."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return channel


REPLIES = take_reply_channel() if __name__ == "__main__" else sys.stdout


def reply(message):
    REPLIES.write(json.dumps(message) + "\n")
    REPLIES.flush()


def start_command_reader():
    """Return a queue that receives each command read from stdin, and "exit" when stdin closes."""
    commands = queue.SimpleQueue()

    def read_commands():
        for line in sys.stdin:
            try:
                commands.put(json.loads(line)["command"])
            except (ValueError, KeyError, TypeError):
                logger.error("Invalid command line %r; send a JSON object with 'command'", line)
        commands.put("exit")

    threading.Thread(target=read_commands, name="poller-commands", daemon=True).start()
    return commands


def run_commands(commands, poll_cycle, on_start=None, describe=None, drain=None):
    """Serve the start, stop, pids, drain and exit commands; call ``poll_cycle()`` once a second between start and stop.

    ``pids`` replies with ``describe()``: the processes to measure, and whatever else the
    poller reports at that moment. ``drain`` replies with ``drain()``: how storing what
    was handed off went.
    """
    cycles = []
    polling = False
    while True:
        if polling:
            try:
                command = commands.get_nowait()
            except queue.Empty:
                command = None
        else:
            command = commands.get()

        if command == "start":
            if on_start is not None:
                on_start()
            cycles = []
            polling = True
        elif command == "stop":
            polling = False
            reply({"event": "cycles", "cycles": cycles})
        elif command == "pids":
            reply({"event": "pids", **(describe() if describe is not None else {})})
        elif command == "drain":
            reply({"event": "drained", **(drain() if drain is not None else {})})
        elif command == "exit":
            return
        elif command is not None:
            logger.error("Unknown command %r; use start, stop, pids or exit", command)

        if polling:
            started_wall = time.time()
            started = time.perf_counter()
            polled, failed, values = poll_cycle()
            duration = time.perf_counter() - started
            cycles.append([started_wall, duration * 1000, polled, failed, values])
            # A cycle that overran its second starts the next one at once, as a busy worker would.
            time.sleep(max(0.0, CYCLE_SECONDS - duration))


class BaselinePoller:
    """Plain pymodbus clients, one per device, kept connected between cycles."""

    def __init__(self, devices, port):
        self.loop = asyncio.new_event_loop()
        self.clients = self.loop.run_until_complete(self._connect(devices, port))

    async def _connect(self, devices, port):
        from pymodbus.client import AsyncModbusTcpClient

        clients = [
            AsyncModbusTcpClient(device_host(index), port=port, timeout=DEVICE_TIMEOUT_SECONDS, retries=0)
            for index in range(devices)
        ]
        connected = await asyncio.gather(*(client.connect() for client in clients))
        missing = [device_host(index) for index, ok in enumerate(connected) if not ok]
        if missing:
            raise ConnectionError(f"Cannot connect to {len(missing)} simulated devices, e.g. {missing[0]}:{port}.")
        return clients

    async def _read_device(self, client):
        from pymodbus.exceptions import ModbusException

        try:
            for start, count in BLOCKS:
                response = await client.read_holding_registers(start, count=count, device_id=DEVICE_ID)
                if response.isError():
                    return False
        except (ModbusException, OSError, TimeoutError) as exc:
            logger.warning("Baseline read from %s failed: %s", client.comm_params.host, exc)
            return False
        return True

    async def _cycle(self):
        results = await asyncio.gather(*(self._read_device(client) for client in self.clients))
        failed = results.count(False)
        # Values read, not stored: the baseline stores nothing.
        return len(results), failed, (len(results) - failed) * REGISTERS_PER_DEVICE

    def poll_cycle(self):
        return self.loop.run_until_complete(self._cycle())

    def close(self):
        for client in self.clients:
            client.close()
        self.loop.close()


def create_devices(devices, port):
    """Create one Modbus TCP device per simulated device, with one point and one sensor per register."""
    from apps.protocols.models import Device, Point
    from apps.sensors.models import Sensor
    from apps.units.models import Site, Unit

    site = Site.objects.create(name="Bench site")
    for index in range(devices):
        unit = Unit.objects.create(site=site, name=f"Bench unit {index}", kind="boiler")
        device = Device.objects.create(
            name=f"Bench device {index}", host=device_host(index), port=port, unit_id=DEVICE_ID,
            poll_interval=CYCLE_SECONDS, timeout=DEVICE_TIMEOUT_SECONDS,
        )
        addresses = [start + offset for start, count in BLOCKS for offset in range(count)]
        sensors = Sensor.objects.bulk_create(
            Sensor(unit=unit, name=f"Register {address}", key=f"hr_{address}", quantity="temperature",
                   minimum=-50, maximum=150)
            for address in addresses
        )
        Point.objects.bulk_create(
            Point(device=device, sensor=sensor, register_type="holding", address=address, data_type="uint16")
            for sensor, address in zip(sensors, addresses)
        )


def ingest_command(*options):
    return [sys.executable, str(PROJECT_DIR / "manage.py"), "run_ingest", "--name", f"bench-{os.getpid()}", *options]


def start_ingest():
    """Start ``manage.py run_ingest``, which stores what the poller queues, as the project runs it."""
    process = subprocess.Popen(ingest_command(), cwd=PROJECT_DIR, stdout=sys.stderr)
    logger.info("Started the ingest process (pid %d)", process.pid)
    return process


def stop_ingest(process):
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        logger.warning("Ingest process (pid %d) did not stop within 60 s; killing it", process.pid)
        process.kill()
        process.wait()
    logger.info("Stopped the ingest process (pid %d, exit code %s)", process.pid, process.returncode)


def drain_intake(values):
    """Store what waits in the intake stream with ``run_ingest --once``; return its time and CPU."""
    from apps.telemetry import intake

    waiting = intake.backlog()
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(ingest_command("--once"), cwd=PROJECT_DIR, stdout=sys.stderr, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = time.perf_counter() - started
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    logger.info("Drained %d intake entries (%d values) in %.1f s", waiting["length"], values, seconds)
    return {"entries": waiting["length"], "values": values, "seconds": seconds, "cpu_seconds": cpu}


def run_thermacore(devices, port, commands, profile_path=None, ingest_mode="during"):
    # scratch sets up Django, so it comes before every project import.
    import scratch
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from apps.protocols.models import Device
    from apps.protocols.polling import poll_due_devices
    from apps.telemetry import intake

    with scratch.scratch_tenant(SCHEMA):
        create_devices(devices, port)
        queued = settings.TELEMETRY_INTAKE_QUEUE
        # Entries left by an aborted run belong to a dropped schema; the consumer would only discard them.
        intake.get_client().delete(intake.STREAM_KEY)
        ingest = start_ingest() if queued and ingest_mode == "during" else None
        handed_off = [0]

        def describe():
            # The ingest process opens its database connection with its first batch, so the
            # backends are listed anew before each window.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
                others = [row[0] for row in cursor.fetchall()]
                cursor.execute("SELECT pg_backend_pid()")
                own = cursor.fetchone()[0]
            return {
                "pids": [os.getpid()],
                "storage_pids": [own],
                "ingest_pids": ([ingest.pid] + others) if ingest else [],
                "intake_backlog": intake.backlog() if ingest else None,
            }

        try:
            reply({"event": "ready", **describe()})

            # NOTE: cProfile profiles only this thread (claim, hand-off, status updates). The polls run
            # in poll_due_devices' own thread and show up here as the wait for their outcomes.
            profiler = cProfile.Profile() if profile_path else None

            def poll_cycle():
                if profiler:
                    profiler.enable()
                summary = poll_due_devices()
                if profiler:
                    profiler.disable()
                handed_off[0] += summary.samples
                return summary.polled, summary.failed, summary.samples

            def drain():
                # With the ingest process running alongside, this only waits for it to catch up.
                values, handed_off[0] = handed_off[0], 0
                if not queued:
                    return {}
                if ingest is None:
                    return drain_intake(values)
                started = time.perf_counter()
                while intake.backlog()["length"]:
                    time.sleep(0.2)
                return {"entries": 0, "values": values, "seconds": time.perf_counter() - started, "cpu_seconds": None}

            def make_all_due():
                # Every run starts with all devices due, whatever the previous run left behind.
                Device.objects.update(next_poll_at=timezone.now())

            run_commands(commands, poll_cycle, on_start=make_all_due, describe=describe, drain=drain)
            if profiler:
                profiler.dump_stats(profile_path)
                logger.info("Wrote the profile of the poll cycles to %s", profile_path)
        finally:
            if ingest is not None:
                stop_ingest(ingest)
    logger.info("Dropped scratch tenant %s", SCHEMA)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("poller", choices=["baseline", "thermacore"], help="Which poller to run.")
    parser.add_argument("--devices", type=int, required=True, help="Number of simulated devices to poll.")
    parser.add_argument("--port", type=int, required=True, help="TCP port of the simulated devices.")
    parser.add_argument("--profile", help="ThermaCore only: file to write a cProfile of the poll cycles to.")
    parser.add_argument("--ingest", choices=["during", "after"], default="during",
                        help="ThermaCore only: run the ingest process while polling, or store the queue after each run.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.ERROR)

    commands = start_command_reader()
    if args.poller == "baseline":
        poller = BaselinePoller(args.devices, args.port)
        reply({"event": "ready", "pids": [os.getpid()], "storage_pids": []})
        try:
            run_commands(commands, poller.poll_cycle, describe=lambda: {"pids": [os.getpid()], "storage_pids": []})
        finally:
            poller.close()
    else:
        run_thermacore(args.devices, args.port, commands, args.profile, args.ingest)


if __name__ == "__main__":
    main()
