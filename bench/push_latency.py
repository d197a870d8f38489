"""Measure latency from a value change at a simulated Modbus device to a connected WebSocket client.

One process runs a pymodbus TCP server (the device) and a task that changes
every holding register about ``--poll-hz`` times a second. A poller reads the
registers at that rate with the pymodbus client and hands them to ``ingest``,
one register per sensor. A WebSocket client is connected to a uvicorn (the
default) or Daphne server in a subprocess (``thermacore.asgi``, JSON format).
The path measured is device register → poll → ingest (validation, COPY,
commit, latest-value cache, subscribers) → channel layer (Redis) → consumer
→ socket. Two latencies are printed per rate:

- change→client: from writing the register to the client receiving the
  value; it includes the wait for the next poll (up to 1/poll-hz);
- read→client: from the poll response to the client receiving the value,
  which is the pipeline's own share.

The requested readings rate is registers × poll-hz, and the achieved rate
(readings ingested per second of the run) is printed beside it. The first second of each run is
discarded as warm-up.

    python bench/push_latency.py --rates 1000 5000 --poll-hz 50 --seconds 10 --server uvicorn
"""

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import websockets
from django.contrib.auth import get_user_model
from django.db import connection, connections
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from scratch import make_sensors, scratch_tenant

from apps.accounts.tokens import TenantTokenObtainPairSerializer
from apps.sensors.samples import Sample
from apps.telemetry.ingest import ingest

SCHEMA = "bench_push"
DOMAIN = "bench-push.localhost"
DEVICE_ID = 1
HOLDING_REGISTERS = 3
MAX_REGISTERS_PER_REQUEST = 125
WARM_UP_SECONDS = 1.0


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Command line of each web server, without the port; uvicorn's matches Procfile.demo.
SERVER_COMMANDS = {
    "uvicorn": [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--ws", "websockets-sansio",
                "--lifespan", "off", "thermacore.asgi:application", "--port"],
    "daphne": [sys.executable, "-m", "daphne", "--bind", "127.0.0.1", "thermacore.asgi:application", "--port"],
}


def start_server(server, port):
    process = subprocess.Popen(
        [*SERVER_COMMANDS[server], str(port)],
        env={**os.environ, "PYTHONPATH": os.getcwd()}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        if process.poll() is not None:
            raise RuntimeError(f"{server} exited with {process.returncode}: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"{server} did not listen on port {port} within 30 s.")


class Run:
    """Shared state of one rate: change times per (register, value) and the latencies measured."""

    def __init__(self, registers):
        self.registers = registers
        self.changed_at = {}
        self.read_at = {}
        self.change_latencies = []
        self.read_latencies = []
        self.ingested = 0
        self.started = time.perf_counter()


async def change_registers(server, run, poll_hz, stop):
    step = 0
    while not stop.is_set():
        step += 1
        # Values 1..100 stay inside the sensors' physical range (-50 to 150).
        values = [(step + register) % 100 + 1 for register in range(run.registers)]
        await server.async_setValues(DEVICE_ID, HOLDING_REGISTERS, 0, values)
        now = time.perf_counter()
        for register, value in enumerate(values):
            run.changed_at[(register, value)] = now
            # A value the client never received (merged away) must not lend its read time to this change.
            run.read_at.pop((register, value), None)
        # A random period keeps the changes from locking onto the poll phase.
        await asyncio.sleep(random.uniform(0.5, 1.5) / poll_hz)


async def poll(port, sensor_ids, run, poll_hz, stop, executor):
    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    await client.connect()
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            started = time.perf_counter()
            values = []
            for offset in range(0, run.registers, MAX_REGISTERS_PER_REQUEST):
                count = min(MAX_REGISTERS_PER_REQUEST, run.registers - offset)
                response = await client.read_holding_registers(offset, count=count, device_id=DEVICE_ID)
                values.extend(response.registers)
            read_at = time.perf_counter()
            when = datetime.now(UTC)
            for register, value in enumerate(values):
                run.read_at.setdefault((register, value), read_at)
            samples = [Sample(sensor_ids[register], when, float(value)) for register, value in enumerate(values)]
            await loop.run_in_executor(executor, ingest, SCHEMA, samples)
            run.ingested += len(samples)
            await asyncio.sleep(max(0.0, 1 / poll_hz - (time.perf_counter() - started)))
    finally:
        client.close()


async def receive(socket_, register_of, run, stop):
    while not stop.is_set():
        try:
            async with asyncio.timeout(0.5):
                message = json.loads(await socket_.recv())
        except TimeoutError:
            continue
        received_at = time.perf_counter()
        if message.get("type") != "readings":
            continue
        for reading in message["readings"]:
            key = (register_of[reading["sensor"]], int(reading["value"]))
            changed = run.changed_at.pop(key, None)
            read = run.read_at.pop(key, None)
            # A value read twice (two polls between changes) is measured once, at its first arrival.
            if changed is None or read is None or received_at - run.started < WARM_UP_SECONDS:
                continue
            run.change_latencies.append(received_at - changed)
            run.read_latencies.append(received_at - read)


async def measure(rate, poll_hz, seconds, web_port, token, all_sensors, executor):
    registers = rate // poll_hz
    sensor_ids = all_sensors[:registers]
    register_of = {sensor_id: register for register, sensor_id in enumerate(sensor_ids)}
    bits = [SimData(0, values=[False], datatype=DataType.BITS)]
    holding = [SimData(0, values=[0] * registers, datatype=DataType.REGISTERS)]
    inputs = [SimData(0, values=[0], datatype=DataType.REGISTERS)]
    # SimDevice takes coils, discrete inputs, holding and input registers in this order.
    device = SimDevice(DEVICE_ID, simdata=(bits, bits, holding, inputs))
    modbus_port = free_port()
    server = ModbusTcpServer(device, address=("127.0.0.1", modbus_port))
    server_task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.3)

    run = Run(registers)
    stop = asyncio.Event()
    # The URI names the tenant's domain for the Host header; host= sends the connection to loopback.
    async with websockets.connect(f"ws://{DOMAIN}:{web_port}/ws/live/?format=json", host="127.0.0.1",
                                  port=web_port, additional_headers={"Authorization": f"Bearer {token}"},
                                  max_queue=None) as client_socket:
        tasks = [
            asyncio.create_task(receive(client_socket, register_of, run, stop)),
            asyncio.create_task(change_registers(server, run, poll_hz, stop)),
            asyncio.create_task(poll(modbus_port, sensor_ids, run, poll_hz, stop, executor)),
        ]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    await server.shutdown()
    server_task.cancel()
    return run


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=int, nargs="+", default=[1000, 5000], help="Readings per second to run.")
    parser.add_argument("--poll-hz", type=int, default=50, help="Polls (and register changes) per second.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Duration of each rate's run, in seconds.")
    parser.add_argument("--server", choices=sorted(SERVER_COMMANDS), default="uvicorn",
                        help="ASGI server that serves the WebSocket.")
    parser.add_argument("--port", type=int, default=0, help="Loopback port of the web server; 0 picks a free one.")
    args = parser.parse_args()

    max_sensors = max(args.rates) // args.poll_hz
    web_port = args.port or free_port()
    with scratch_tenant(SCHEMA):
        sensor_ids = make_sensors(max_sensors, "push")
        token = str(TenantTokenObtainPairSerializer.get_token(get_user_model().objects.get(username="bench")).access_token)
        connection.close()
        web_server = start_server(args.server, web_port)
        # One ingest thread, as one poller task would have; it keeps one database connection.
        executor = ThreadPoolExecutor(max_workers=1)
        try:
            for rate in args.rates:
                run = asyncio.run(measure(rate, args.poll_hz, args.seconds, web_port, token, sensor_ids, executor))
                if not run.change_latencies:
                    print(f"rate={rate}/s: no value reached the client")
                    continue
                change_ms = [latency * 1000 for latency in run.change_latencies]
                read_ms = [latency * 1000 for latency in run.read_latencies]
                achieved = run.ingested / args.seconds
                print(
                    f"rate={rate}/s (achieved {achieved:,.0f}/s) poll={args.poll_hz} Hz values measured={len(change_ms)} "
                    f"change->client p50={statistics.median(change_ms):.1f} ms p99={percentile(change_ms, 0.99):.1f} ms "
                    f"read->client p50={statistics.median(read_ms):.1f} ms p99={percentile(read_ms, 0.99):.1f} ms"
                )
        finally:
            web_server.terminate()
            web_server.wait(timeout=10)
            executor.submit(connections.close_all).result()
            executor.shutdown()


if __name__ == "__main__":
    main()
