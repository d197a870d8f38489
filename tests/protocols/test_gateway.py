"""The gateway process with MQTT connections of two tenants against real Mosquitto brokers on loopback.

The gateway runs under async_to_sync, as run_gateway runs it, so its database calls come
back to the test's thread and see the test's uncommitted rows.
"""

import asyncio
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.publish as publish
import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import connection
from django_tenants.utils import schema_context

from apps.protocols import gateway as gateway_module
from apps.protocols.choices import DeviceStatus
from apps.protocols.drivers.mqtt import MqttDriver
from apps.protocols.gateway import Gateway
from apps.protocols.gateway_commands import CommandServer
from apps.protocols.models import Device, Point
from apps.sensors.quality import Quality
from apps.telemetry.models import Reading
from tests.conftest import free_port
from tests.factories import DeviceFactory, PointFactory, SensorFactory
from tests.protocols.conftest import MQTT_BROKER

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Seconds run_gateway_during waits for the gateway to stop after the scenario.
STOP_TIMEOUT = 30


def mqtt_device(port=MQTT_BROKER[1], **fields):
    fields.setdefault("timeout", 2.0)
    return DeviceFactory(protocol="mqtt", port=port, client_id=f"tc-test-{uuid.uuid4().hex}", **fields)


def mqtt_point(device, topic, **fields):
    return PointFactory(device=device, address=None, topic=topic, sensor=SensorFactory(minimum=0, maximum=100),
                        **fields)


def fast_gateway(**options):
    options = {"tick": 0.05, "heartbeat_interval": 0.2, "reload_interval": 60, "min_backoff": 0.1,
               "max_backoff": 0.4, **options}
    return Gateway(**options)


def task_stacks():
    """Return the stack of every task of the running event loop, as Task.print_stack prints it."""
    output = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(file=output)
    return output.getvalue()


def run_gateway_during(gateway, scenario):
    """Run ``gateway`` while the coroutine function ``scenario`` runs, then stop it and return the result."""

    async def main():
        task = asyncio.create_task(gateway.run())
        try:
            return await scenario()
        finally:
            gateway.request_stop()
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await asyncio.shield(task)
            except TimeoutError:
                raise AssertionError(f"The gateway did not stop within {STOP_TIMEOUT} s. Tasks still running:\n"
                                     f"{task_stacks()}") from None

    return async_to_sync(main)()


async def eventually(check, timeout=15):
    """Return the first truthy result of the database function ``check``, polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await sync_to_async(check, thread_sensitive=True)()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{check.__name__} stayed false for {timeout} s")
        await asyncio.sleep(0.05)


async def connected(gateway, count):
    async with asyncio.timeout(15):
        while sum(1 for c in gateway.connections.values() if c.driver and c.driver.connected) < count:
            await asyncio.sleep(0.02)


async def publish_to(port, topic, payload):
    await asyncio.to_thread(publish.single, topic, payload, qos=1, hostname="127.0.0.1", port=port)


def readings_in(schema, sensor_id):
    with schema_context(schema):
        return list(Reading.objects.filter(sensor_id=sensor_id).order_by("time").values_list("value", "quality"))


def test_gateway_stores_values_of_each_tenant(alpha, topic_prefix):
    alpha_device = mqtt_device()
    alpha_point = mqtt_point(alpha_device, f"{topic_prefix}/alpha/+", json_path="$.temp")
    with schema_context("beta"):
        beta_device = mqtt_device()
        beta_point = mqtt_point(beta_device, f"{topic_prefix}/beta/temp")
    gateway = fast_gateway()

    async def scenario():
        await connected(gateway, 2)
        await publish_to(MQTT_BROKER[1], f"{topic_prefix}/alpha/boiler1", '{"temp": 71.5}')
        await publish_to(MQTT_BROKER[1], f"{topic_prefix}/beta/temp", "42")

        def stored():
            return readings_in("alpha", alpha_point.sensor_id) and readings_in("beta", beta_point.sensor_id)

        def online():
            with schema_context("beta"):
                beta_seen = Device.objects.get(pk=beta_device.pk).last_seen
            return Device.objects.get(pk=alpha_device.pk).status == DeviceStatus.ONLINE and beta_seen

        await eventually(stored)
        await eventually(online)

    run_gateway_during(gateway, scenario)

    assert readings_in("alpha", alpha_point.sensor_id) == [(71.5, Quality.GOOD)]
    assert readings_in("beta", beta_point.sensor_id) == [(42.0, Quality.GOOD)]
    alpha_device.refresh_from_db()
    assert alpha_device.status == DeviceStatus.ONLINE
    assert alpha_device.last_seen is not None
    assert connection.schema_name == "alpha"


def test_failing_connection_backs_off_and_others_continue(alpha, topic_prefix, caplog):
    caplog.set_level(logging.INFO, logger="apps.protocols.gateway")
    broken = mqtt_device(port=free_port(), timeout=0.5)
    broken_point = mqtt_point(broken, f"{topic_prefix}/broken")
    working = mqtt_device()
    working_point = mqtt_point(working, f"{topic_prefix}/working")
    gateway = fast_gateway()

    async def scenario():
        await connected(gateway, 1)

        def failed_three_times():
            return Device.objects.get(pk=broken.pk).consecutive_failures >= 3

        await eventually(failed_three_times)
        await publish_to(MQTT_BROKER[1], f"{topic_prefix}/working", "55")
        await eventually(lambda: readings_in("alpha", working_point.sensor_id))

    run_gateway_during(gateway, scenario)

    broken.refresh_from_db()
    assert broken.status == DeviceStatus.OFFLINE
    assert "Cannot connect to MQTT broker" in broken.last_error
    assert broken.error_count >= 3
    assert readings_in("alpha", broken_point.sensor_id) == [(None, Quality.BAD_COMM_LOST)]
    assert readings_in("alpha", working_point.sensor_id) == [(55.0, Quality.GOOD)]
    prefix = f"Schema alpha device {broken.pk}: connection failed"
    assert f"{prefix} (1 in a row), retrying in 0.1 s" in caplog.text
    assert f"{prefix} (2 in a row), retrying in 0.2 s" in caplog.text
    assert f"{prefix} (3 in a row), retrying in 0.4 s" in caplog.text
    assert f"Schema alpha device {broken.pk}: starting mqtt connection" in caplog.text
    assert f"Gateway {gateway.commands.gateway_id} stopped" in caplog.text


def test_gateway_resubscribes_after_broker_restart(alpha, private_broker):
    device = mqtt_device(port=private_broker.port)
    point = mqtt_point(device, "plant/boiler1/temp")
    gateway = fast_gateway()

    async def scenario():
        await connected(gateway, 1)
        await publish_to(private_broker.port, "plant/boiler1/temp", "20")
        await eventually(lambda: readings_in("alpha", point.sensor_id))

        # This broker keeps no sessions, so only a new SUBSCRIBE brings the next message.
        await asyncio.to_thread(private_broker.stop)
        await eventually(lambda: Device.objects.get(pk=device.pk).status == DeviceStatus.OFFLINE)
        await asyncio.to_thread(private_broker.start)
        await connected(gateway, 1)
        await publish_to(private_broker.port, "plant/boiler1/temp", "21")
        await eventually(lambda: len(readings_in("alpha", point.sensor_id)) == 3)

    run_gateway_during(gateway, scenario)

    assert readings_in("alpha", point.sensor_id) == [
        (20.0, Quality.GOOD), (None, Quality.BAD_COMM_LOST), (21.0, Quality.GOOD),
    ]


def test_gateway_reload_applies_changed_topic(alpha, topic_prefix):
    device = mqtt_device()
    point = mqtt_point(device, f"{topic_prefix}/old")
    gateway = fast_gateway(reload_interval=0.2)

    async def scenario():
        await connected(gateway, 1)
        first_driver = next(iter(gateway.connections.values())).driver
        await sync_to_async(Point.objects.filter(pk=point.pk).update, thread_sensitive=True)(
            topic=f"{topic_prefix}/new"
        )
        async with asyncio.timeout(15):
            while True:
                connection_ = gateway.connections.get(("alpha", device.pk))
                if connection_ and connection_.driver is not first_driver and connection_.driver.connected:
                    break
                await asyncio.sleep(0.02)
        await publish_to(MQTT_BROKER[1], f"{topic_prefix}/new", "33")
        await eventually(lambda: readings_in("alpha", point.sensor_id))

    run_gateway_during(gateway, scenario)

    assert readings_in("alpha", point.sensor_id) == [(33.0, Quality.GOOD)]


def test_disabled_device_gets_no_connection(alpha):
    mqtt_device(enabled=False)
    DeviceFactory()
    gateway = fast_gateway()

    async def scenario():
        await gateway.reload()
        return dict(gateway.connections)

    assert run_gateway_during(gateway, scenario) == {}


def test_backoff_doubles_up_to_maximum():
    gateway = Gateway(min_backoff=1, max_backoff=30)

    assert [gateway.backoff(failures) for failures in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_stop_survives_lost_cancellation(alpha, topic_prefix, monkeypatch, caplog):
    # On Python 3.11 a task cancelled inside asyncio.wait_for, as redis-py sends commands, may go on
    # running. Here the MQTT connection and the request listener each ignore their first cancellation.
    lost = []

    def ignoring_first_cancellation(function):
        async def wrapper(*args, **kwargs):
            try:
                return await function(*args, **kwargs)
            except asyncio.CancelledError:
                lost.append(function.__qualname__)
                await asyncio.Event().wait()
        return wrapper

    monkeypatch.setattr(MqttDriver, "run", ignoring_first_cancellation(MqttDriver.run))
    monkeypatch.setattr(CommandServer, "_listen", ignoring_first_cancellation(CommandServer._listen))
    monkeypatch.setattr(gateway_module, "CLOSE_GRACE_SECONDS", 0.2)
    mqtt_point(mqtt_device(), f"{topic_prefix}/boiler/temp")
    gateway = fast_gateway()
    caplog.set_level(logging.WARNING, logger="thermacore.aio")

    async def scenario():
        await connected(gateway, 1)
        [supervised] = gateway.connections.values()
        return supervised, supervised.driver

    started = time.monotonic()
    supervised, driver = run_gateway_during(gateway, scenario)
    stop_seconds = time.monotonic() - started

    assert sorted(lost) == ["CommandServer._listen", "MqttDriver.run"]
    assert supervised.task.cancelled()
    assert driver.client is None, "the stopped connection left its MQTT client open"
    assert stop_seconds < STOP_TIMEOUT
    assert f"Gateway {gateway.commands.gateway_id}: task gateway-listen is still running after 1 cancellations" \
        in caplog.text
    assert f"Schema alpha device {supervised.spec.device.pk}: task gateway-alpha-{supervised.spec.device.pk} " \
        "is still running after 1 cancellations" in caplog.text


def test_run_gateway_stops_on_sigterm(alpha):
    database = settings.DATABASES["default"]
    environment = {
        **os.environ,
        "THERMACORE_DATABASE_URL": f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/"
        f"{database['NAME']}",
        "THERMACORE_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_gateway", "--heartbeat", "0.5"],
        cwd=PROJECT_ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output = []
        for line in process.stdout:
            output.append(line)
            if re.search(r"Gateway \S+ started", line):
                break
        process.send_signal(signal.SIGTERM)
        remaining, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    output.append(remaining)
    assert process.returncode == 0, "".join(output)
    [gateway_id] = re.findall(r"Gateway (\S+) started", "".join(output))
    assert f"Gateway {gateway_id} stopping 0 connections" in "".join(output)
    assert f"Gateway {gateway_id} stopped" in "".join(output)


def test_gateway_stops_suspended_tenant_and_resumes(alpha, topic_prefix, caplog):
    from django.utils import timezone

    from apps.tenants.choices import TenantStatus
    from apps.tenants.models import Tenant

    device = mqtt_device()
    point = mqtt_point(device, f"{topic_prefix}/temp")
    with schema_context("beta"):
        beta_device = mqtt_device()
        mqtt_point(beta_device, f"{topic_prefix}/beta")
    gateway = fast_gateway(reload_interval=0.2)
    alpha_key = ("alpha", device.pk)
    beta_key = ("beta", beta_device.pk)

    def set_alpha_status(status):
        suspended_at = timezone.now() if status == TenantStatus.SUSPENDED else None
        Tenant.objects.filter(schema_name="alpha").update(status=status, suspended_at=suspended_at)

    async def wait_until(condition):
        async with asyncio.timeout(15):
            while not condition():
                await asyncio.sleep(0.02)

    async def scenario():
        await connected(gateway, 2)
        first_driver = gateway.connections[alpha_key].driver
        await sync_to_async(set_alpha_status, thread_sensitive=True)(TenantStatus.SUSPENDED)
        await wait_until(lambda: alpha_key not in gateway.connections)
        stopped = dict(gateway.connections)
        await sync_to_async(set_alpha_status, thread_sensitive=True)(TenantStatus.ACTIVE)
        await wait_until(lambda: alpha_key in gateway.connections and gateway.connections[alpha_key].driver
                         is not None and gateway.connections[alpha_key].driver.connected)
        await publish_to(MQTT_BROKER[1], f"{topic_prefix}/temp", "44")
        await eventually(lambda: readings_in("alpha", point.sensor_id))
        return stopped, first_driver

    with caplog.at_level(logging.INFO, logger="apps.protocols.gateway"):
        stopped, first_driver = run_gateway_during(gateway, scenario)

    assert list(stopped) == [beta_key]
    assert first_driver.connected is False
    assert "Schema alpha: tenant suspended, stopping its 1 connections" in caplog.text
    assert f"Schema alpha device {device.pk}: tenant suspended, stopping its connection" in caplog.text
    assert "Schema alpha: tenant resumed, starting its 1 connections" in caplog.text
    assert (44.0, Quality.GOOD) in readings_in("alpha", point.sensor_id)
