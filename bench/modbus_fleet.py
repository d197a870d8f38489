"""A fleet of simulated Modbus TCP devices for bench/modbus_scaling.py, and how each one is laid out.

Every device is a pymodbus server of its own on its own loopback address
(127.0.1.1, 127.0.1.2, ...) and one shared port. A poller so opens one TCP
connection per device, as it would in a plant, and the benchmark needs only
one port. Each server counts the holding registers it returns. A device
counts as polled once all of its registers have been read, however the
poller splits them into requests, so every poller is counted the same way.

Run as a process of its own (``python bench/modbus_fleet.py --devices N --port P``);
it reads one JSON command per line on stdin and writes one JSON reply per line:

- ``{"command": "reset"}`` clears the counters and replies ``{"event": "reset"}``;
- ``{"command": "stats"}`` replies with the polls counted since the last reset;
- ``{"command": "exit"}`` closes the servers and ends the process.
"""

import argparse
import asyncio
import itertools
import json
import logging
import os
import sys
import threading
import time

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

logger = logging.getLogger("modbus_fleet")

# (start address, register count) of each holding-register block per layout. In
# "three-blocks" the gaps are wider than the ThermaCore driver's MAX_GAP (8), so
# every poller reads each block with a request of its own.
LAYOUTS = {"one-block": ((0, 50),), "three-blocks": ((0, 20), (100, 15), (200, 15))}
# The benchmark passes its --layout to the fleet and the pollers through the environment.
LAYOUT_VARIABLE = "BENCH_MODBUS_LAYOUT"
DEFAULT_LAYOUT = "one-block"


def layout_blocks():
    """Return the blocks of the layout named in BENCH_MODBUS_LAYOUT (one-block by default)."""
    name = os.environ.get(LAYOUT_VARIABLE, DEFAULT_LAYOUT)
    if name not in LAYOUTS:
        raise ValueError(f"Unknown layout {name!r} in {LAYOUT_VARIABLE}; use one of {', '.join(LAYOUTS)}.")
    return LAYOUTS[name]


BLOCKS = layout_blocks()
REGISTERS_PER_DEVICE = sum(count for _, count in BLOCKS)
DEVICE_ID = 1
READ_HOLDING_REGISTERS = 3
# 127.0.1.1 to 127.0.1.250, then 127.0.2.1 and on: 250 devices per /24.
DEVICES_PER_SUBNET = 250
MAX_DEVICES = DEVICES_PER_SUBNET * 254


def device_host(index):
    """Return the loopback address of device ``index`` (0-based)."""
    if not 0 <= index < MAX_DEVICES:
        raise ValueError(f"Invalid device index {index}; use 0 to {MAX_DEVICES - 1}.")
    return f"127.0.{1 + index // DEVICES_PER_SUBNET}.{1 + index % DEVICES_PER_SUBNET}"


def register_value(address):
    """Return the value of register ``address`` on every device, from 1 to 100 to fit a -50..150 sensor range."""
    return address % 100 + 1


def build_device():
    holding = [
        SimData(start, values=[register_value(start + offset) for offset in range(count)], datatype=DataType.REGISTERS)
        for start, count in BLOCKS
    ]
    bits = [SimData(0, values=[False], datatype=DataType.BITS)]
    inputs = [SimData(0, values=[0], datatype=DataType.REGISTERS)]
    # SimDevice takes coils, discrete inputs, holding and input registers in this order.
    return SimDevice(DEVICE_ID, simdata=(bits, bits, holding, inputs))


class PollCounter:
    """Registers returned by one device, and the times at which a whole device poll completed."""

    def __init__(self):
        self.registers = 0
        self.completed_at = []

    def trace_pdu(self, sending, pdu):
        # pymodbus calls this with sending=True for every response the server sends.
        if sending and pdu.function_code == READ_HOLDING_REGISTERS and getattr(pdu, "registers", None):
            before = self.registers // REGISTERS_PER_DEVICE
            self.registers += len(pdu.registers)
            if self.registers // REGISTERS_PER_DEVICE > before:
                self.completed_at.append(time.monotonic())
        return pdu


def percentile(values, fraction):
    """Return the nearest-rank percentile of ``values``, or None for an empty list."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Fleet:
    def __init__(self, devices, port):
        self.devices = devices
        self.port = port
        self.counters = [PollCounter() for _ in range(devices)]
        self.servers = []
        self.reset_at = time.monotonic()

    async def start(self):
        device = build_device()
        for index, counter in enumerate(self.counters):
            server = ModbusTcpServer(device, address=(device_host(index), self.port), trace_pdu=counter.trace_pdu)
            await server.serve_forever(background=True)
            self.servers.append(server)
        logger.info("Started %d simulated devices on port %d", self.devices, self.port)

    async def stop(self):
        for server in self.servers:
            await server.shutdown()
        logger.info("Stopped %d simulated devices", len(self.servers))

    def reset(self):
        self.reset_at = time.monotonic()
        for counter in self.counters:
            counter.registers = 0
            counter.completed_at = []

    def stats(self):
        """Summarize the polls since the last reset: totals, devices never polled, intervals in ms."""
        elapsed = time.monotonic() - self.reset_at
        intervals = []
        for counter in self.counters:
            times = counter.completed_at
            intervals.extend((later - earlier) * 1000 for earlier, later in itertools.pairwise(times))
        return {
            "event": "stats",
            "seconds": elapsed,
            "registers": sum(counter.registers for counter in self.counters),
            "polls": sum(len(counter.completed_at) for counter in self.counters),
            "devices_not_polled": sum(1 for counter in self.counters if not counter.completed_at),
            "interval_p50_ms": percentile(intervals, 0.50),
            "interval_p99_ms": percentile(intervals, 0.99),
        }


def reply(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve(devices, port):
    fleet = Fleet(devices, port)
    await fleet.start()
    loop = asyncio.get_running_loop()
    commands = asyncio.Queue()

    def read_commands():
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line)
        # stdin closed: the orchestrator has gone, so stop as on "exit".
        loop.call_soon_threadsafe(commands.put_nowait, '{"command": "exit"}')

    threading.Thread(target=read_commands, name="fleet-commands", daemon=True).start()
    reply({"event": "ready", "devices": devices})
    while True:
        line = await commands.get()
        try:
            command = json.loads(line)["command"]
        except (ValueError, KeyError, TypeError):
            logger.error("Invalid command line %r; send a JSON object with 'command'", line)
            continue
        if command == "reset":
            fleet.reset()
            reply({"event": "reset"})
        elif command == "stats":
            reply(fleet.stats())
        elif command == "exit":
            break
        else:
            logger.error("Unknown command %r; use reset, stats or exit", command)
    await fleet.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, required=True, help="Number of simulated devices.")
    parser.add_argument("--port", type=int, required=True, help="TCP port every device listens on.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Only pymodbus errors reach stderr, so that hundreds of servers do not flood it.
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    asyncio.run(serve(args.devices, args.port))


if __name__ == "__main__":
    main()
