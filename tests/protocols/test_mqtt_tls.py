"""MQTT over TLS with certificates of the tenant store, against a Mosquitto with a TLS listener on loopback."""

import asyncio
import tempfile
from pathlib import Path

import pytest

from apps.audit.services import Actor
from apps.protocols.certificates import import_certificate
from apps.protocols.drivers.base import DeviceUnreachable
from apps.protocols.drivers.mqtt import MqttDriver
from apps.protocols.models import Device, Point
from tests.conftest import free_port_in
from tests.protocols.conftest import PrivateBroker
from tests.protocols.pki import make_pki
from tests.protocols.test_mqtt import Collector

# Ports of this module's brokers; other suites running beside it use other ranges.
PORTS = range(21580, 21600)
ACTOR = Actor.system_job("tests.mqtt_tls")


def port_in_range():
    return free_port_in(PORTS)


def start_tls_broker(directory, pki):
    broker = PrivateBroker(directory)
    broker.port = port_in_range()
    broker.config.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"cafile {pki.files['ca.pem']}\ncertfile {pki.files['server.pem']}\nkeyfile {pki.files['server.key']}\n"
        "require_certificate true\n"
    )
    broker.start()
    return broker



@pytest.fixture
def pki(tls_directory):
    return make_pki(tls_directory)


@pytest.fixture
def broker(tls_directory, pki):
    handle = start_tls_broker(tls_directory, pki)
    yield handle
    handle.stop()


def store_device(port, *, trusted_pem=None, client_pki=None, **fields):
    """Save an MQTT device with store certificates and load it as the gateway does."""
    device = Device.objects.create(name=f"Broker {port}", protocol="mqtt", host="127.0.0.1", port=port,
                                   timeout=2.0, qos=1, **fields)
    if client_pki:
        device.client_certificate = import_certificate(
            f"MQTT client {device.pk}", client_pki.client_pem, client_pki.client_key_pem, actor=ACTOR
        )
        device.save()
    if trusted_pem:
        device.trusted_certificates.add(import_certificate(f"MQTT trust {device.pk}", trusted_pem, actor=ACTOR))
    return Device.objects.with_certificates().get(pk=device.pk)


async def receive_one(device, topic, payload):
    """Subscribe to ``topic`` with ``device``, publish ``payload`` with a second client, return the samples."""
    point = Point(id=1, sensor_id=101, topic=topic, address=None)
    subscriber = MqttDriver(device, schema="alpha")
    collector = Collector()
    task = asyncio.create_task(subscriber.run([point], collector))
    try:
        async with asyncio.timeout(10):
            while not subscriber.connected:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        device.client_id = "tc-tls-store-publisher"
        publisher = MqttDriver(device, schema="alpha")
        await publisher.connect()
        await asyncio.to_thread(lambda: publisher.client.publish(topic, payload, qos=1).wait_for_publish(5))
        await publisher.close()
        return await collector.wait_for(1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await subscriber.close()


async def connect_only(device):
    driver = MqttDriver(device, schema="alpha")
    try:
        await driver.connect()
        return driver.connected
    finally:
        await driver.close()


def test_store_certificates_connect(alpha, broker, pki):
    device = store_device(broker.port, trusted_pem=pki.ca_pem, client_pki=pki, client_id="tc-tls-store-subscriber")

    samples = asyncio.run(receive_one(device, "plant/tls/temp", "21.5"))

    assert samples[0].value == 21.5
    # The decrypted key went to a temporary file only while the context loaded it.
    assert not list(Path(tempfile.gettempdir()).glob("thermacore-mqtt-*.pem"))


def test_store_without_client_certificate_rejected(alpha, broker, pki):
    device = store_device(broker.port, trusted_pem=pki.ca_pem)

    with pytest.raises(DeviceUnreachable):
        asyncio.run(connect_only(device))


def test_untrusted_broker_rejected(alpha, broker, pki, tmp_path):
    other = make_pki(tmp_path, ca_name="Other CA")
    device = store_device(broker.port, trusted_pem=other.ca_pem, client_pki=pki)

    with pytest.raises(DeviceUnreachable, match="certificate verify failed"):
        asyncio.run(connect_only(device))


def test_client_certificate_needs_trust_list(alpha, broker, pki):
    device = store_device(broker.port, client_pki=pki)

    with pytest.raises(DeviceUnreachable, match="trusts no broker certificate"):
        asyncio.run(connect_only(device))


def test_hostname_checked_by_default(alpha, tls_directory):
    pki = make_pki(tls_directory, server_names=("broker.thermacore.test",))
    broker = start_tls_broker(tls_directory, pki)
    try:
        checked = store_device(broker.port, trusted_pem=pki.ca_pem, client_pki=pki)
        with pytest.raises(DeviceUnreachable, match="match|mismatch"):
            asyncio.run(connect_only(checked))

        Device.objects.filter(pk=checked.pk).update(tls_verify_hostname=False)
        unchecked = Device.objects.with_certificates().get(pk=checked.pk)
        assert asyncio.run(connect_only(unchecked)) is True
    finally:
        broker.stop()


def test_unreadable_ca_file_named(alpha, settings, tmp_path):
    settings.THERMACORE_TLS_FILES_DIR = str(tmp_path)
    device = store_device(port_in_range(), tls_ca_file="thermacore-ca.pem")

    with pytest.raises(DeviceUnreachable, match=r"TLS settings of MQTT device \d+ cannot be loaded: .*No such file"):
        asyncio.run(connect_only(device))


def test_unloaded_certificates_rejected(alpha, broker, pki):
    loaded = store_device(broker.port, trusted_pem=pki.ca_pem, client_pki=pki)
    unloaded = Device.objects.get(pk=loaded.pk)

    with pytest.raises(DeviceUnreachable, match="certificates were not loaded before connecting"):
        asyncio.run(connect_only(unloaded))
