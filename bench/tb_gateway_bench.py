"""ThingsBoard IoT Gateway as a third poller in bench/modbus_scaling.py: broker, fake platform and start-up.

The gateway (PyPI package ``thingsboard-gateway``) is not a project
dependency. It runs from a virtual environment of its own (``--tb-python``),
because it pins a pymodbus release (3.9.2 in gateway 3.8.5) that differs from
ours. ``ensure_gateway_venv`` (``--tb-venv`` of bench/modbus_scaling.py) creates
that environment with GATEWAY_PACKAGES.

The gateway talks MQTT to a ThingsBoard server. Here that is a Mosquitto
broker started on a loopback port and ``FakePlatform``, an MQTT client. It
responds to the one client-side RPC that the gateway waits for at start-up
(``getSessionLimits``), returns empty attributes to attribute requests, and
counts the telemetry messages and datapoints that it receives.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from modbus_fleet import DEVICE_ID, device_host, layout_blocks

logger = logging.getLogger("tb_gateway_bench")

LAUNCHER = Path(__file__).resolve().parent / "tb_gateway_launcher.py"
GATEWAY_USER = "bench-gateway"
PLATFORM_USER = "bench-platform"
# Session limits with no rate limit ("0:0,"), so the fake platform never throttles the gateway.
SESSION_LIMITS = {
    "maxPayloadSize": 65536,
    "maxInflightMessages": 100,
    "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
    "gatewayRateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
}
# ThingsBoard keeps the RPC topics one-way, but here one broker carries both sides. The gateway
# (tb-mqtt-client 1.13) subscribes to rpc/request/+ for server-side RPCs, so without this ACL it
# would receive its own getSessionLimits request.
ACL = f"""user {GATEWAY_USER}
topic readwrite v1/gateway/#
topic readwrite v1/devices/me/attributes/#
topic write v1/devices/me/attributes
topic write v1/devices/me/telemetry
topic write v1/devices/me/rpc/request/#
topic read v1/devices/me/rpc/response/#

user {PLATFORM_USER}
topic readwrite #
"""


# The gateway release measured in docs/benchmarks.md. Its Modbus connector installs pymodbus 3.9.2
# at start unless that version is already present, so it is installed with it.
GATEWAY_PACKAGES = ("thingsboard-gateway==3.8.5", "pymodbus==3.9.2", "pyserial", "pyserial-asyncio")


def ensure_gateway_venv(path):
    """Create a virtual environment with GATEWAY_PACKAGES at ``path`` unless it has them; return its Python."""
    path = Path(path)
    python = path / "bin" / "python"
    marker = path / ".thermacore-gateway-packages"
    if python.is_file() and marker.is_file() and marker.read_text() == "\n".join(GATEWAY_PACKAGES):
        return python
    logger.info("Installing %s into %s", " ".join(GATEWAY_PACKAGES), path)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *GATEWAY_PACKAGES], check=True)
    marker.write_text("\n".join(GATEWAY_PACKAGES))
    return python


def start_mosquitto(work_dir, port):
    """Start a Mosquitto broker on 127.0.0.1:``port`` with the ACL above, wait until it listens and return it.

    Mosquitto started as root drops to the ``mosquitto`` user, so ``work_dir`` must be readable by others.
    """
    acl_file = work_dir / "mosquitto.acl"
    acl_file.write_text(ACL)
    config_file = work_dir / "mosquitto.conf"
    config_file.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {acl_file}\npersistence false\n"
        "log_dest stderr\nlog_type error\nlog_type warning\n"
    )
    log_file = work_dir / "mosquitto.log"
    with open(log_file, "w") as log:
        process = subprocess.Popen(["mosquitto", "-c", str(config_file)], stderr=log)
    deadline = time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                logger.info("Started mosquitto (pid %d) on 127.0.0.1:%d", process.pid, port)
                return process
        time.sleep(0.1)
    stop_process(process, "mosquitto")
    raise RuntimeError(
        f"Mosquitto did not listen on 127.0.0.1:{port} within 10 s: {log_file.read_text()[-1000:]!r}. "
        f"Check that the port is free and that {work_dir} is readable by the mosquitto user."
    )


class FakePlatform:
    """Fake ThingsBoard server side of the gateway's MQTT session, which counts the telemetry it receives."""

    def __init__(self, port):
        self.port = port
        self.lock = threading.Lock()
        self.messages = 0
        self.datapoints = 0
        self.devices_seen = set()
        self.session_limit_requests = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-platform")
        self.client.username_pw_set(PLATFORM_USER)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def start(self):
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.connect("127.0.0.1", self.port)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.client.loop_start()

    def stop(self):
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe([
            ("v1/devices/me/rpc/request/+", 1),
            ("v1/devices/me/attributes/request/+", 1),
            ("v1/gateway/attributes/request", 1),
            ("v1/gateway/telemetry", 1),
        ])

    def _on_message(self, client, userdata, message):
        topic = message.topic
        if topic.startswith("v1/devices/me/rpc/request/"):
            request_id = topic.rsplit("/", 1)[1]
            request = json.loads(message.payload)
            if request.get("method") == "getSessionLimits":
                self.session_limit_requests += 1
                response = SESSION_LIMITS
            else:
                response = {"error": f"Unsupported method {request.get('method')!r}"}
            client.publish(f"v1/devices/me/rpc/response/{request_id}", json.dumps(response), qos=1)
        elif topic.startswith("v1/devices/me/attributes/request/"):
            client.publish(f"v1/devices/me/attributes/response/{topic.rsplit('/', 1)[1]}", "{}", qos=1)
        elif topic == "v1/gateway/attributes/request":
            request = json.loads(message.payload)
            client.publish("v1/gateway/attributes/response",
                           json.dumps({"id": request.get("id"), "device": request.get("device"), "value": None}),
                           qos=1)
        elif topic == "v1/gateway/telemetry":
            self._count_telemetry(json.loads(message.payload))

    def _count_telemetry(self, payload):
        datapoints = 0
        for entries in payload.values():
            for entry in entries:
                datapoints += len(entry.get("values", {}))
        with self.lock:
            self.messages += 1
            self.datapoints += datapoints
            self.devices_seen.update(payload)

    def forget_devices(self):
        """Forget which devices have sent telemetry, before a new gateway starts."""
        with self.lock:
            self.devices_seen = set()

    def counts(self):
        with self.lock:
            return {"messages": self.messages, "datapoints": self.datapoints, "devices": len(self.devices_seen)}


def write_config(config_dir, devices, fleet_port, broker_port):
    """Write tb_gateway.json and modbus.json for ``devices`` simulated devices into ``config_dir``."""
    config_dir.mkdir(parents=True, exist_ok=True)
    gateway = {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": broker_port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 60, "customStatsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False},
            "maxPayloadSizeBytes": 8196,
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 60,
            "handleDeviceRenaming": True,
            "security": {"type": "accessToken", "accessToken": GATEWAY_USER},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": 100000},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}],
    }
    # The connector files each response under its tag, so every block needs a tag of its own.
    telemetry = [
        {
            "tag": f"block{block}_hr_${{address}}",
            "type": "16uint",
            "functionCode": 3,
            "objectsCount": 1,
            "address": f"{start}-{start + count - 1}",
            "maxRegistersPerRequest": 125,
        }
        for block, (start, count) in enumerate(layout_blocks())
    ]
    slaves = [
        {
            "host": device_host(index),
            "port": fleet_port,
            "type": "tcp",
            "method": "socket",
            "unitId": DEVICE_ID,
            "deviceName": f"Bench device {index}",
            "deviceType": "default",
            "timeout": 2,
            "byteOrder": "BIG",
            "wordOrder": "BIG",
            "retries": 0,
            "pollPeriod": 1000,
            "connectAttemptTimeMs": 5000,
            "connectAttemptCount": 5,
            "waitAfterFailedAttemptsMs": 300000,
            "attributes": [],
            "timeseries": telemetry,
            "attributeUpdates": [],
            "rpc": [],
        }
        for index in range(devices)
    ]
    (config_dir / "tb_gateway.json").write_text(json.dumps(gateway, indent=2))
    (config_dir / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}, indent=2))


def start_gateway(python, work_dir, config_dir, proxy_port):
    """Start the gateway under ``python`` (the gateway's own venv) in ``work_dir``; return the process."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TB_GW_CONFIG_DIR": str(config_dir),
        # The launcher turns the update check off. Any other HTTP request of the gateway goes
        # to this proxy on a closed loopback port, so it fails without leaving the host.
        "HTTP_PROXY": f"http://127.0.0.1:{proxy_port}",
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}",
        "NO_PROXY": "",
    }
    with open(work_dir / "gateway.out", "w") as log:
        process = subprocess.Popen([python, str(LAUNCHER)], cwd=work_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    logger.info("Started ThingsBoard gateway (pid %d) with config in %s", process.pid, config_dir)
    return process


def stop_process(process, name, timeout=15):
    """Stop ``process`` with SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) did not stop within %d s; killing it", name, process.pid, timeout)
            process.kill()
            process.wait()
    logger.info("Stopped %s (pid %d, exit code %s)", name, process.pid, process.returncode)


if __name__ == "__main__":
    sys.exit("Run bench/modbus_scaling.py; this module has no command of its own.")
