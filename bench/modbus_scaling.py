"""Measure how Modbus TCP polling scales with the number of devices, against a bare client and another gateway.

For each size (number of devices) one process runs that many simulated
devices (bench/modbus_fleet.py: one pymodbus server per device on its own
loopback address, 50 holding registers in one block or, with ``--layout
three-blocks``, in three). Three pollers read
all of them once a second, one poller at a time:

- baseline: plain pymodbus clients, kept connected, ``asyncio.gather`` over
  the devices, nothing stored (bench/modbus_pollers.py);
- thermacore: ``apps.protocols.polling.poll_due_devices`` in a scratch tenant,
  which reads with the project's Modbus driver, hands every sample to the
  intake stream and updates each device's status, with a ``manage.py
  run_ingest`` process storing the samples (bench/modbus_pollers.py);
- tb-gateway: ThingsBoard IoT Gateway's Modbus connector, publishing to a
  Mosquitto broker and a fake platform (bench/tb_gateway_bench.py), when
  ``--tb-venv`` (a venv the script creates) or ``--tb-python`` names the gateway's Python.

Each run warms up, then measures a window of ``--seconds``:

- polls/s: whole device polls (all 50 registers) counted by the devices;
- cycle p50/p99: time to poll every device once, as the poller measures it
  (for ThermaCore one ``poll_due_devices`` call: claim, poll, store, status);
  the gateway has no cycle, because it polls each device on a timer of its own;
- interval p50/p99: time between two polls of one device, seen by the device;
- CPU s per 1000 polls: CPU time of the poller process; "ingest" is that of
  ThermaCore's ingest process and its PostgreSQL backends; "with storage"
  adds every process that stores or carries the data (ThermaCore: the
  poller's backend and ingest; gateway: Mosquitto); Redis and the fake
  platform are not counted;
- RSS of the poller process at the end of the window.

Every configuration runs ``--repeats`` times, interleaved, and the medians
are printed with their ratio to the baseline of the same size.

    python bench/modbus_scaling.py --sizes 10 100 500 --repeats 3 --tb-venv /tmp/tbgw-venv
"""

import argparse
import json
import logging
import os
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import tb_gateway_bench
from modbus_fleet import DEFAULT_LAYOUT, LAYOUT_VARIABLE, LAYOUTS, percentile

logger = logging.getLogger("modbus_scaling")

BENCH_DIR = Path(__file__).resolve().parent
CONFIGURATIONS = ("baseline", "thermacore", "tb-gateway")


class JsonLineProcess:
    """A child process that takes one JSON command per line on stdin and writes one JSON reply per line."""

    def __init__(self, name, args, **kwargs):
        self.name = name
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kwargs)
        self.replies = queue.SimpleQueue()
        threading.Thread(target=self._read, name=f"{name}-replies", daemon=True).start()
        logger.info("Started %s (pid %d)", name, self.process.pid)

    def _read(self):
        for line in self.process.stdout:
            try:
                self.replies.put(json.loads(line))
            except ValueError:
                logger.error("%s sent a line that is not JSON: %r", self.name, line[:200])
        self.replies.put(None)

    def send(self, command):
        self.process.stdin.write(json.dumps({"command": command}) + "\n")
        self.process.stdin.flush()

    def receive(self, event, timeout):
        try:
            message = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name} (pid {self.process.pid}) sent no {event!r} within {timeout:g} s.") from None
        if message is None:
            raise RuntimeError(f"{self.name} (pid {self.process.pid}) exited with {self.process.wait()}; see its stderr.")
        if message.get("event") != event:
            raise RuntimeError(f"{self.name} sent {message.get('event')!r} where {event!r} was expected.")
        return message

    def exit(self):
        if self.process.poll() is None:
            self.send("exit")
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) did not exit within 120 s; killing it", self.name, self.process.pid)
            self.process.kill()
            self.process.wait()
        logger.info("Stopped %s (pid %d, exit code %s)", self.name, self.process.pid, self.process.returncode)


def cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            # A PostgreSQL backend that ended during the window; its CPU time is lost to the count.
            logger.warning("Process %d ended before its CPU time was read", pid)
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


class Window:
    """CPU time of the poller and storage processes, and the fleet's poll counts, over one measured window."""

    def __init__(self, fleet, poller_pids, storage_pids, ingest_pids=()):
        self.fleet = fleet
        self.poller_pids = poller_pids
        self.storage_pids = storage_pids
        self.ingest_pids = list(ingest_pids)

    def __enter__(self):
        self.fleet.send("reset")
        self.fleet.receive("reset", 10)
        self.load_start = os.getloadavg()[0]
        self.poller_cpu = cpu_seconds(self.poller_pids)
        self.storage_cpu = cpu_seconds(self.storage_pids)
        self.ingest_cpu = cpu_seconds(self.ingest_pids)
        self.started_wall = time.time()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        if exc_info[0] is not None:
            return
        self.seconds = time.perf_counter() - self.started
        self.ended_wall = time.time()
        self.poller_cpu = cpu_seconds(self.poller_pids) - self.poller_cpu
        self.storage_cpu = cpu_seconds(self.storage_pids) - self.storage_cpu
        self.ingest_cpu = cpu_seconds(self.ingest_pids) - self.ingest_cpu
        self.rss_mb = sum(psutil.Process(pid).memory_info().rss for pid in self.poller_pids) / 2**20
        self.load_end = os.getloadavg()[0]
        self.fleet.send("stats")
        self.stats = self.fleet.receive("stats", 30)

    def result(self, configuration, size, repeat, **extra):
        polls = self.stats["polls"]
        per_thousand = 1000 / polls if polls else float("nan")
        return {
            "configuration": configuration,
            "devices": size,
            "repeat": repeat,
            "seconds": self.seconds,
            "polls_per_second": polls / self.seconds,
            "registers_per_second": self.stats["registers"] / self.seconds,
            "devices_not_polled": self.stats["devices_not_polled"],
            "interval_p50_ms": self.stats["interval_p50_ms"],
            "interval_p99_ms": self.stats["interval_p99_ms"],
            "cpu_per_1000_polls": self.poller_cpu * per_thousand,
            "cpu_with_storage_per_1000_polls": (self.poller_cpu + self.storage_cpu + self.ingest_cpu) * per_thousand,
            "cpu_ingest_per_1000_polls": self.ingest_cpu * per_thousand,
            "poller_cpu_share": self.poller_cpu / self.seconds,
            "ingest_cpu_share": self.ingest_cpu / self.seconds,
            "rss_mb": self.rss_mb,
            "load_start": self.load_start,
            "load_end": self.load_end,
            **extra,
        }


def run_worker(worker, configuration, fleet, size, repeat, args):
    """Run one measured window of a poller process from bench/modbus_pollers.py."""
    worker.send("start")
    time.sleep(args.warmup)
    worker.send("pids")
    before = worker.receive("pids", 60)
    with Window(fleet, before["pids"], before["storage_pids"], before.get("ingest_pids", [])) as window:
        time.sleep(args.seconds)
    worker.send("pids")
    after = worker.receive("pids", 60)
    worker.send("stop")
    cycles = worker.receive("cycles", 120)["cycles"]
    worker.send("drain")
    drained = worker.receive("drained", 3600)
    # Cycles that started inside the window; each is [start, duration ms, polled, failed, samples].
    measured = [cycle for cycle in cycles if window.started_wall <= cycle[0] <= window.ended_wall]
    durations = [cycle[1] for cycle in measured]
    return window.result(
        configuration, size, repeat,
        cycles=len(measured),
        cycle_p50_ms=percentile(durations, 0.50),
        cycle_p99_ms=percentile(durations, 0.99),
        failed_polls=sum(cycle[3] for cycle in measured),
        values_per_second=sum(cycle[4] for cycle in measured) / window.seconds if measured else 0.0,
        intake_backlog_start=before.get("intake_backlog"),
        intake_backlog_end=after.get("intake_backlog"),
        drain=drained,
        stored_values_per_second=(drained["values"] / drained["seconds"]
                                  if drained.get("cpu_seconds") and drained["seconds"] else None),
    )


def run_tb_gateway(fleet, platform, broker, size, repeat, args):
    """Start the gateway, wait until every device's telemetry arrives, measure one window and stop it."""
    work_dir = args.work_dir / f"tb-{size}-{repeat}"
    shutil.rmtree(work_dir, ignore_errors=True)
    config_dir = work_dir / "config"
    tb_gateway_bench.write_config(config_dir, size, args.port, args.broker_port)
    platform.forget_devices()
    gateway = tb_gateway_bench.start_gateway(args.tb_python, work_dir, config_dir, args.proxy_port)
    try:
        deadline = time.monotonic() + args.tb_start_timeout
        while platform.counts()["devices"] < size and time.monotonic() < deadline:
            if gateway.poll() is not None:
                raise RuntimeError(f"The gateway exited with {gateway.returncode}; see {work_dir / 'gateway.out'}.")
            time.sleep(0.5)
        started_in = args.tb_start_timeout - (deadline - time.monotonic())
        devices_reporting = platform.counts()["devices"]
        if devices_reporting < size:
            logger.warning("Only %d of %d devices sent telemetry within %g s", devices_reporting, size,
                           args.tb_start_timeout)
        time.sleep(args.warmup)
        before = platform.counts()
        with Window(fleet, [gateway.pid], [broker.pid]) as window:
            time.sleep(args.seconds)
        after = platform.counts()
        remote = sorted({
            connection.raddr.ip for connection in psutil.Process(gateway.pid).net_connections("inet")
            if connection.raddr and not connection.raddr.ip.startswith("127.")
        })
        if remote:
            logger.error("The gateway has connections beyond loopback: %s", remote)
        return window.result(
            "tb-gateway", size, repeat,
            cycles=None, cycle_p50_ms=None, cycle_p99_ms=None, failed_polls=None,
            values_per_second=(after["datapoints"] - before["datapoints"]) / window.seconds,
            telemetry_messages_per_second=(after["messages"] - before["messages"]) / window.seconds,
            start_seconds=started_in,
            non_loopback_peers=remote,
        )
    finally:
        tb_gateway_bench.stop_process(gateway, "ThingsBoard gateway")


def median_of(results, key):
    values = [result[key] for result in results if result.get(key) is not None]
    return statistics.median(values) if values else None


def print_summary(results, sizes):
    """Print one Markdown table of medians per size and configuration, with ratios to the baseline."""
    columns = [
        ("polls/s", "polls_per_second", "{:,.0f}"),
        ("cycle p50 ms", "cycle_p50_ms", "{:,.0f}"),
        ("cycle p99 ms", "cycle_p99_ms", "{:,.0f}"),
        ("interval p50 ms", "interval_p50_ms", "{:,.0f}"),
        ("interval p99 ms", "interval_p99_ms", "{:,.0f}"),
        ("CPU s/1000 polls", "cpu_per_1000_polls", "{:.2f}"),
        ("ingest", "cpu_ingest_per_1000_polls", "{:.2f}"),
        ("with storage", "cpu_with_storage_per_1000_polls", "{:.2f}"),
        ("RSS MB", "rss_mb", "{:,.0f}"),
        ("stored values/s after", "stored_values_per_second", "{:,.0f}"),
        ("load", "load_start", "{:.1f}"),
    ]
    ratio_keys = ("polls_per_second", "cycle_p50_ms", "cpu_per_1000_polls", "rss_mb")
    print("| devices | poller | " + " | ".join(title for title, _, _ in columns) + " | ratio polls/s, cycle p50, CPU, RSS |")
    print("|---|---|" + "---:|" * len(columns) + "---|")
    for size in sizes:
        baseline = [result for result in results if result["devices"] == size and result["configuration"] == "baseline"]
        for configuration in CONFIGURATIONS:
            rows = [result for result in results if result["devices"] == size and result["configuration"] == configuration]
            if not rows:
                continue
            cells = []
            for _, key, form in columns:
                value = median_of(rows, key)
                cells.append("n/a" if value is None else form.format(value))
            ratios = []
            for key in ratio_keys:
                value, base = median_of(rows, key), median_of(baseline, key)
                ratios.append("n/a" if value is None or not base else f"{value / base:.2f}")
            print(f"| {size} | {configuration} | " + " | ".join(cells) + " | " + ", ".join(ratios) + " |")


def run_size(size, args, platform, broker, results):
    fleet = JsonLineProcess("device fleet", [sys.executable, str(BENCH_DIR / "modbus_fleet.py"),
                                             "--devices", str(size), "--port", str(args.port)])
    workers = {}
    try:
        fleet.receive("ready", 120)
        for configuration in ("baseline", "thermacore"):
            command = [
                sys.executable, str(BENCH_DIR / "modbus_pollers.py"), configuration,
                "--devices", str(size), "--port", str(args.port),
            ]
            if configuration == "thermacore":
                command += ["--ingest", args.ingest]
                if args.profile_thermacore:
                    command += ["--profile", str(args.profile_thermacore)]
            worker = JsonLineProcess(f"{configuration} poller", command)
            workers[configuration] = worker
            worker.ready = worker.receive("ready", 1200)
        for repeat in range(1, args.repeats + 1):
            for configuration in CONFIGURATIONS:
                if configuration == "tb-gateway":
                    if not args.tb_python:
                        continue
                    result = run_tb_gateway(fleet, platform, broker, size, repeat, args)
                else:
                    result = run_worker(workers[configuration], configuration, fleet, size, repeat, args)
                results.append(result)
                logger.info("%s", json.dumps(result))
    finally:
        for worker in workers.values():
            worker.exit()
        fleet.exit()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500], help="Numbers of devices to run.")
    parser.add_argument("--repeats", type=int, default=3, help="Measured runs of each configuration per size.")
    parser.add_argument("--warmup", type=float, default=5.0, help="Seconds of polling before each window.")
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of each measured window, in seconds.")
    parser.add_argument("--port", type=int, default=21700, help="TCP port of the simulated devices.")
    parser.add_argument("--broker-port", type=int, default=21701, help="TCP port of the Mosquitto broker.")
    parser.add_argument("--proxy-port", type=int, default=21799,
                        help="Closed loopback port set as the gateway's HTTP proxy.")
    parser.add_argument("--tb-python", default="",
                        help="Python of the ThingsBoard gateway's own venv; empty to skip the gateway.")
    parser.add_argument("--tb-venv", type=Path,
                        help="Folder of a venv to create with ThingsBoard IoT Gateway 3.8.5 (unless it exists) "
                             "and measure the gateway from; replaces --tb-python.")
    parser.add_argument("--tb-start-timeout", type=float, default=120.0,
                        help="Seconds to wait for telemetry of every device after the gateway starts.")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/thermacore-modbus-scaling"),
                        help="Folder for the broker's and the gateway's configuration and logs.")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default=DEFAULT_LAYOUT,
                        help="Registers of each device: 50 in one block (one request per poll) or in three blocks.")
    parser.add_argument("--ingest", choices=["during", "after"], default="during",
                        help="Run ThermaCore's ingest process while it polls, or after each window, timed on its own.")
    parser.add_argument("--json", type=Path, help="File to write every run's figures to, as JSON.")
    parser.add_argument("--profile-thermacore", type=Path,
                        help="File to write a cProfile of ThermaCore's poll cycles to; its figures are slower.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.tb_venv is not None:
        if args.tb_python:
            parser.error("pass either --tb-venv or --tb-python, not both.")
        args.tb_python = str(tb_gateway_bench.ensure_gateway_venv(args.tb_venv))
    if args.tb_python and not Path(args.tb_python).is_file():
        parser.error(f"--tb-python {args.tb_python!r} is not a file; pass the gateway venv's bin/python or ''.")

    # The fleet, the pollers and the gateway's configuration read the layout from the environment.
    os.environ[LAYOUT_VARIABLE] = args.layout
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = []
    broker = platform = None
    try:
        if args.tb_python:
            broker = tb_gateway_bench.start_mosquitto(args.work_dir, args.broker_port)
            platform = tb_gateway_bench.FakePlatform(args.broker_port)
            platform.start()
        for size in args.sizes:
            run_size(size, args, platform, broker, results)
    finally:
        if platform is not None:
            platform.stop()
        if broker is not None:
            tb_gateway_bench.stop_process(broker, "mosquitto")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    print(f"{len(psutil.Process().children())} child processes left; cores: {psutil.cpu_count()}")
    print_summary(results, args.sizes)


if __name__ == "__main__":
    main()
