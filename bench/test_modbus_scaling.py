"""Tests of the pieces of bench/modbus_scaling.py, against real pymodbus servers and a real Mosquitto.

They are not part of the project's suite (testpaths is tests/); run them with

    python -m pytest -q -p no:cacheprovider bench/test_modbus_scaling.py

They use ports 21710 to 21712 on loopback.
"""

import asyncio
import json
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from pymodbus.client import AsyncModbusTcpClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tb_gateway_bench
from modbus_fleet import BLOCKS, DEVICE_ID, REGISTERS_PER_DEVICE, device_host, percentile
from modbus_scaling import JsonLineProcess

BENCH_DIR = Path(__file__).resolve().parent
FLEET_PORT = 21710
BROKER_PORT = 21711


@pytest.fixture
def fleet():
    process = JsonLineProcess("test fleet", [sys.executable, str(BENCH_DIR / "modbus_fleet.py"),
                                             "--devices", "2", "--port", str(FLEET_PORT)])
    process.receive("ready", 30)
    yield process
    process.exit()


async def read_blocks(index, blocks):
    client = AsyncModbusTcpClient(device_host(index), port=FLEET_PORT)
    assert await client.connect()
    try:
        return [
            (await client.read_holding_registers(start, count=count, device_id=DEVICE_ID)).registers
            for start, count in blocks
        ]
    finally:
        client.close()


def test_device_host_addresses():
    assert device_host(0) == "127.0.1.1"
    assert device_host(249) == "127.0.1.250"
    assert device_host(250) == "127.0.2.1"
    with pytest.raises(ValueError, match="Invalid device index -1"):
        device_host(-1)


def test_percentile_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([3, 1, 2], 0.5) == 2
    assert percentile(list(range(100)), 0.99) == 99


def test_fleet_counts_whole_polls(fleet):
    asyncio.run(read_blocks(0, BLOCKS))
    asyncio.run(read_blocks(0, BLOCKS))
    # Device 1 gets only the first 20 registers, which is not a whole poll.
    first_block = asyncio.run(read_blocks(1, [(BLOCKS[0][0], 20)]))

    fleet.send("stats")
    stats = fleet.receive("stats", 10)

    assert first_block[0][:3] == [1, 2, 3]
    assert stats["polls"] == 2
    assert stats["registers"] == 2 * REGISTERS_PER_DEVICE + 20
    assert stats["devices_not_polled"] == 1
    assert stats["interval_p50_ms"] is not None


def test_fleet_reset_clears_counts(fleet):
    asyncio.run(read_blocks(0, BLOCKS))
    fleet.send("reset")
    fleet.receive("reset", 10)
    fleet.send("stats")

    stats = fleet.receive("stats", 10)

    assert stats["polls"] == 0
    assert stats["registers"] == 0
    assert stats["devices_not_polled"] == 2


def test_baseline_poller_cycles(fleet):
    poller = JsonLineProcess("test baseline poller", [
        sys.executable, str(BENCH_DIR / "modbus_pollers.py"), "baseline", "--devices", "2", "--port", str(FLEET_PORT),
    ])
    try:
        poller.receive("ready", 30)
        poller.send("start")
        time.sleep(1.5)
        poller.send("stop")
        cycles = poller.receive("cycles", 30)["cycles"]
    finally:
        poller.exit()
    fleet.send("stats")
    stats = fleet.receive("stats", 10)

    assert len(cycles) >= 1
    for _started, duration_ms, polled, failed, values in cycles:
        assert duration_ms > 0
        assert polled == 2
        assert failed == 0
        assert values == 2 * REGISTERS_PER_DEVICE
    assert stats["polls"] == 2 * len(cycles)


@pytest.mark.parametrize(("layout", "addresses"), [
    ("one-block", ["0-49"]), ("three-blocks", ["0-19", "100-114", "200-214"]),
])
def test_gateway_config_reads_same_blocks(tmp_path, monkeypatch, layout, addresses):
    monkeypatch.setenv("BENCH_MODBUS_LAYOUT", layout)
    tb_gateway_bench.write_config(tmp_path, 3, FLEET_PORT, BROKER_PORT)
    gateway = json.loads((tmp_path / "tb_gateway.json").read_text())
    slaves = json.loads((tmp_path / "modbus.json").read_text())["master"]["slaves"]

    assert gateway["thingsboard"]["host"] == "127.0.0.1"
    assert gateway["thingsboard"]["port"] == BROKER_PORT
    assert gateway["thingsboard"]["remoteShell"] is False
    assert [slave["host"] for slave in slaves] == [device_host(index) for index in range(3)]
    for slave in slaves:
        assert slave["pollPeriod"] == 1000
        assert [item["address"] for item in slave["timeseries"]] == addresses
        # The connector files responses by tag, so equal tags would mix the blocks up.
        assert len({item["tag"] for item in slave["timeseries"]}) == len(addresses)


@pytest.fixture
def broker():
    # pytest's tmp_path is private to root, and Mosquitto reads its files as the mosquitto user.
    work_dir = Path(tempfile.mkdtemp(prefix="thermacore-bench-broker-"))
    work_dir.chmod(0o755)
    process = tb_gateway_bench.start_mosquitto(work_dir, BROKER_PORT)
    yield process
    tb_gateway_bench.stop_process(process, "test mosquitto")
    shutil.rmtree(work_dir)


def connect_as_gateway(received):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-gateway")
    client.username_pw_set(tb_gateway_bench.GATEWAY_USER)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.on_message = lambda _client, _userdata, message: received.put((message.topic, message.payload))
    deadline = time.monotonic() + 10
    while True:
        try:
            client.connect("127.0.0.1", BROKER_PORT)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    client.loop_start()
    assert connected.wait(10)
    return client


def test_fake_platform_session_and_telemetry(broker):
    platform = tb_gateway_bench.FakePlatform(BROKER_PORT)
    platform.start()
    received = queue.SimpleQueue()
    gateway = connect_as_gateway(received)
    try:
        # The gateway subscribes to both RPC directions, as ThingsBoard IoT Gateway does.
        gateway.subscribe([("v1/devices/me/rpc/request/+", 1), ("v1/devices/me/rpc/response/+", 1)])
        time.sleep(0.5)
        gateway.publish("v1/devices/me/rpc/request/1",
                        json.dumps({"method": "getSessionLimits", "params": {"timeout": 5000}}), qos=1)
        topic, payload = received.get(timeout=10)
        telemetry = {"Bench device 0": [{"ts": 1, "values": {"a": 1, "b": 2}}],
                     "Bench device 1": [{"ts": 1, "values": {"a": 3}}]}
        gateway.publish("v1/gateway/telemetry", json.dumps(telemetry), qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 10
        while platform.counts()["messages"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        gateway.loop_stop()
        gateway.disconnect()
        platform.stop()

    # The ACL keeps the gateway's own request from coming back to it, so the first message is the response.
    assert topic == "v1/devices/me/rpc/response/1"
    assert json.loads(payload) == tb_gateway_bench.SESSION_LIMITS
    assert received.empty()
    assert platform.counts() == {"messages": 1, "datapoints": 3, "devices": 2}


def test_stop_process_kills_after_timeout():
    ignore_sigterm = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", ignore_sigterm], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"

    tb_gateway_bench.stop_process(process, "test sleeper", timeout=1)

    assert process.returncode == -9


def test_layout_comes_from_the_environment(monkeypatch):
    from modbus_fleet import LAYOUT_VARIABLE, layout_blocks

    monkeypatch.setenv(LAYOUT_VARIABLE, "three-blocks")
    assert layout_blocks() == ((0, 20), (100, 15), (200, 15))
    monkeypatch.setenv(LAYOUT_VARIABLE, "one-block")
    assert layout_blocks() == ((0, 50),)
    monkeypatch.setenv(LAYOUT_VARIABLE, "two-blocks")
    with pytest.raises(ValueError, match="Unknown layout 'two-blocks' in BENCH_MODBUS_LAYOUT"):
        layout_blocks()
