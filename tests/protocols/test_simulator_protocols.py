"""The plant simulator over MQTT and OPC UA next to Modbus, read back by ThermaCore's own drivers."""

import asyncio
import math
import socket

import pytest
from pymodbus.client import AsyncModbusTcpClient

from apps.protocols.drivers.dnp3 import Dnp3Driver
from apps.protocols.drivers.mqtt import MqttDriver
from apps.protocols.drivers.opcua import OpcUaDriver
from apps.protocols.models import Device, Point
from apps.protocols.simulator.dnp3_outstation import MASTER_ADDRESS, OUTSTATION_ADDRESS, PlantDnp3Outstation
from apps.protocols.simulator.faults import FaultInjector, PointFault
from apps.protocols.simulator.mqtt_publisher import PlantMqttPublisher, format_payload
from apps.protocols.simulator.opcua_server import NAMESPACE_URI
from apps.protocols.simulator.plant import PLANT, Plant
from apps.protocols.simulator.server import serve_plant
from apps.sensors.quality import Quality
from tests.conftest import free_port
from tests.protocols.conftest import MQTT_BROKER
from tests.protocols.test_mqtt import Collector, start_driver, stop_driver


def test_format_payload():
    assert format_payload(True) == "1"
    assert format_payload(False) == "0"
    assert format_payload(math.nan) == "NaN"
    assert format_payload(21.25) == "21.25"


def test_publisher_rejects_wildcard_prefix():
    with pytest.raises(ValueError, match="without wildcards"):
        PlantMqttPublisher(Plant(seed=1), prefix="plant/#")


@pytest.mark.asyncio
async def test_published_points_reach_driver(topic_prefix):
    plant = FaultInjector(Plant(seed=3), [PointFault("nan", 1, "supply_temp")])
    publisher = PlantMqttPublisher(plant, host=MQTT_BROKER[0], port=MQTT_BROKER[1], prefix=topic_prefix)
    points = [
        Point(id=1, sensor_id=101, topic=f"{topic_prefix}/1/return_temp", address=None),
        Point(id=2, sensor_id=102, topic=f"{topic_prefix}/1/supply_temp", address=None),
        Point(id=3, sensor_id=103, topic=f"{topic_prefix}/2/run_status", address=None),
    ]
    device = Device(id=1, name="Broker", protocol="mqtt", host=MQTT_BROKER[0], port=MQTT_BROKER[1], timeout=3.0,
                    client_id=f"thermacore-test-{topic_prefix[-40:].replace('/', '-')}")
    driver = MqttDriver(device, schema="alpha")
    collector = Collector()
    task = await start_driver(driver, points, collector)

    await publisher.start()
    publisher.publish()
    await collector.wait_for(3)
    await publisher.stop()
    await stop_driver(driver, task)

    by_sensor = {sample.sensor_id: sample for sample in collector.samples}
    assert by_sensor[101].value == pytest.approx(plant.values(PLANT[0])["return_temp"])
    assert by_sensor[101].quality == Quality.GOOD
    assert (by_sensor[102].value, by_sensor[102].quality) == (None, Quality.BAD_NOT_A_NUMBER)
    assert by_sensor[103].value in (0.0, 1.0)
    assert publisher.published == sum(len(unit.points) for unit in PLANT)


# All protocols at once


@pytest.mark.asyncio
async def test_serve_plant_over_all_protocols(topic_prefix):
    modbus_port, opcua_port, dnp3_port = free_port(), free_port(), free_port()
    ready = asyncio.Event()
    faults = (PointFault("exception", 1, "supply_temp"),)
    serving = asyncio.create_task(serve_plant(
        port=modbus_port, update_interval=0.1, seed=5, ready=ready, faults=faults,
        mqtt_broker=MQTT_BROKER, mqtt_prefix=topic_prefix, opcua_port=opcua_port, dnp3_port=dnp3_port,
    ))
    await asyncio.wait_for(ready.wait(), 30)
    opcua_device = Device(id=2, name="Simulator", protocol="opcua", host="127.0.0.1", port=opcua_port,
                          endpoint_path="/thermacore/simulator/", timeout=5.0)
    opcua = OpcUaDriver(opcua_device, schema="alpha")
    mqtt_device = Device(id=3, name="Broker", protocol="mqtt", host=MQTT_BROKER[0], port=MQTT_BROKER[1],
                         timeout=3.0, client_id=f"thermacore-test-all-{topic_prefix[-30:].replace('/', '-')}")
    mqtt_driver = MqttDriver(mqtt_device, schema="alpha")
    collector = Collector()
    mqtt_task = await start_driver(mqtt_driver, [Point(id=9, sensor_id=109, topic=f"{topic_prefix}/2/flow",
                                                       address=None)], collector)
    modbus = AsyncModbusTcpClient("127.0.0.1", port=modbus_port)
    await modbus.connect()

    await collector.wait_for(1)
    async with opcua:
        namespace = await opcua.client.get_namespace_index(NAMESPACE_URI)
        opcua_samples = await opcua.read([
            Point(id=1, sensor_id=101, node_id=f"ns={namespace};s=1.return_temp", address=None),
            Point(id=2, sensor_id=102, node_id=f"ns={namespace};s=1.supply_temp", address=None),
        ])
    register = await modbus.read_holding_registers(0, count=2, device_id=1)
    modbus.close()
    dnp3_listening = socket.create_connection(("127.0.0.1", dnp3_port), timeout=2)
    dnp3_listening.close()
    await stop_driver(mqtt_driver, mqtt_task)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving

    assert math.isfinite(opcua_samples[0].value)
    assert opcua_samples[0].quality == Quality.GOOD
    assert (opcua_samples[1].value, opcua_samples[1].quality) == (None, Quality.BAD_DEVICE_EXCEPTION)
    assert "BadDeviceFailure" in opcua.point_errors[2]
    assert register.exception_code == 2
    assert collector.samples[0].quality == Quality.GOOD


@pytest.mark.asyncio
async def test_dnp3_outstation_serves_plant_with_faults():
    plant = FaultInjector(Plant(seed=4), [PointFault("nan", 2, "supply_temp")])
    outstation = PlantDnp3Outstation(plant, port=free_port())
    outstation.start()
    expected_points = {101: (1, "return_temp"), 102: (2, "supply_temp"), 103: (1, "pump_command")}
    points = []
    for sensor_id, (device_id, key) in expected_points.items():
        point_type, index = outstation.index_of(device_id, key)
        points.append(Point(id=sensor_id - 100, sensor_id=sensor_id, dnp3_type=point_type, dnp3_index=index,
                            address=None))
    device = Device(id=4, name="Simulator RTU", protocol="dnp3", host="127.0.0.1", port=outstation.port, timeout=2.0,
                    dnp3_master_address=MASTER_ADDRESS, dnp3_outstation_address=OUTSTATION_ADDRESS)
    driver = Dnp3Driver(device, schema="alpha")
    collector = Collector()

    task = asyncio.create_task(driver.run(points, collector))
    try:
        async with asyncio.timeout(10):
            while {sample.sensor_id for sample in collector.samples} != set(expected_points):
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await driver.close()
        outstation.stop()

    latest = {sample.sensor_id: sample for sample in collector.samples}
    assert latest[101].value == pytest.approx(plant.values(PLANT[0])["return_temp"], rel=1e-6)
    assert latest[101].quality == Quality.GOOD
    assert latest[102].value is None
    assert latest[102].quality == Quality.BAD_COMM_LOST
    assert latest[103].value == float(plant.values(PLANT[0])["pump_command"])
