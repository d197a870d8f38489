"""Connection tests and address-space browsing through the API, against real Modbus, OPC UA and MQTT peers."""

import asyncio

import pytest
from paho.mqtt import publish

from apps.audit.services import Actor
from apps.protocols.certificates import generate_certificate, import_certificate
from apps.protocols.choices import OpcUaSecurityMode, OpcUaSecurityPolicy
from apps.protocols.diagnostics import TopicDiscovery
from apps.protocols.models import Point
from tests.conftest import free_port
from tests.factories import DeviceFactory, PointFactory, SensorFactory
from tests.protocols.conftest import MQTT_BROKER

ACTOR = Actor.system_job("tests.diagnostics")


def connection_test_url(device):
    return f"/api/v1/devices/{device.pk}/test/"


def browse_url(device):
    return f"/api/v1/devices/{device.pk}/browse/"


# Connection test


def test_connection_test_reads_modbus_point(alpha_api, register_server):
    register_server.set("holding", 10, [1234])
    device = DeviceFactory(port=register_server.port)
    PointFactory(device=device, register_type="holding", address=10, data_type="uint16")

    response = alpha_api.post(connection_test_url(device))

    assert response.status_code == 200
    assert response.data["ok"] is True
    assert response.data["value"] == 1234.0
    assert response.data["quality"] == "Good"
    assert 0 < response.data["round_trip_ms"] < 5000


def test_connection_test_reports_exception_response(alpha_api, register_server):
    device = DeviceFactory(port=register_server.port)
    PointFactory(device=device, register_type="holding", address=300, data_type="uint16")

    response = alpha_api.post(connection_test_url(device))

    assert response.data["ok"] is False
    assert "exception" in response.data["message"].lower()
    assert response.data["value"] is None


def test_connection_test_reports_refused_connection(alpha_api):
    device = DeviceFactory(port=free_port(), timeout=0.5)

    response = alpha_api.post(connection_test_url(device))

    assert response.status_code == 200
    assert response.data["ok"] is False
    assert f"127.0.0.1:{device.port}" in response.data["message"]


def test_connection_test_with_opcua_security(alpha_api, secure_opcua_server):
    client = generate_certificate("Diagnostics client", common_name="ThermaCore", actor=ACTOR)
    device = DeviceFactory(
        protocol="opcua", port=secure_opcua_server.port, endpoint_path=secure_opcua_server.endpoint_path,
        timeout=5.0, opcua_security_mode=OpcUaSecurityMode.SIGN_AND_ENCRYPT,
        opcua_security_policy=OpcUaSecurityPolicy.BASIC256SHA256, client_certificate=client,
    )
    device.trusted_certificates.add(import_certificate("Diagnostics server", secure_opcua_server.certificate_pem,
                                                       actor=ACTOR))
    Point.objects.create(device=device, sensor=SensorFactory(),
                         node_id=secure_opcua_server.node_id("Boiler1.ReturnTemp"), address=None)

    response = alpha_api.post(connection_test_url(device))

    assert response.data["ok"] is True, response.data
    assert response.data["value"] == 50.0


def test_connection_test_names_untrusted_server(alpha_api, secure_opcua_server):
    client = generate_certificate("Untrusting client", common_name="ThermaCore", actor=ACTOR)
    device = DeviceFactory(
        protocol="opcua", port=secure_opcua_server.port, endpoint_path=secure_opcua_server.endpoint_path,
        timeout=5.0, opcua_security_mode=OpcUaSecurityMode.SIGN, client_certificate=client,
    )

    response = alpha_api.post(connection_test_url(device))

    assert response.data["ok"] is False
    assert "does not trust" in response.data["message"]


def test_connection_test_mqtt_broker(alpha_api):
    device = DeviceFactory(protocol="mqtt", host=MQTT_BROKER[0], port=MQTT_BROKER[1])

    response = alpha_api.post(connection_test_url(device))

    assert response.data["ok"] is True
    assert response.data["message"] == f"Connected to 127.0.0.1:{MQTT_BROKER[1]}."
    assert response.data["point_id"] is None


# OPC UA browse


def _opcua_device(server):
    return DeviceFactory(protocol="opcua", port=server.port, endpoint_path=server.endpoint_path, timeout=3.0)


def test_browse_opcua_objects_then_variables(alpha_api, opcua_server):
    device = _opcua_device(opcua_server)

    objects = alpha_api.get(browse_url(device))
    [plant] = [node for node in objects.data["results"] if node["display_name"] == "Plant"]
    variables = alpha_api.get(browse_url(device), {"node": plant["node_id"]})

    assert objects.status_code == 200
    assert plant["node_class"] == "Object"
    assert plant["browse_name"].endswith(":Plant")
    found = {node["node_id"]: (node["node_class"], node["data_type"]) for node in variables.data["results"]}
    assert found[opcua_server.node_id("Boiler1.SupplyTemp")] == ("Variable", "Double")
    assert found[opcua_server.node_id("Boiler1.Level")] == ("Variable", "Float")
    assert found[opcua_server.node_id("Boiler1.Starts")] == ("Variable", "Int16")
    assert found[opcua_server.node_id("Boiler1.Running")] == ("Variable", "Boolean")
    assert found[opcua_server.node_id("Boiler1.Model")] == ("Variable", "String")


def test_browse_invalid_node_id_is_bad_request(alpha_api, opcua_server):
    response = alpha_api.get(browse_url(_opcua_device(opcua_server)), {"node": "ns=2;x=oops"})

    assert response.status_code == 400
    assert "ns=2;x=oops" in str(response.data["detail"])


def test_browse_unreachable_server_is_bad_gateway(alpha_api):
    device = DeviceFactory(protocol="opcua", port=free_port(), timeout=0.5)

    response = alpha_api.get(browse_url(device))

    assert response.status_code == 502
    assert "Cannot connect to OPC UA server" in response.data["detail"]


def test_browse_modbus_device_is_bad_request(alpha_api):
    response = alpha_api.get(browse_url(DeviceFactory()))

    assert response.status_code == 400
    assert "browsing works for OPC UA and MQTT devices" in str(response.data["detail"])


# MQTT topic discovery


@pytest.fixture
def retained_topics(topic_prefix):
    """Two retained messages under the test's prefix, cleared again afterwards."""
    messages = [(f"{topic_prefix}/boiler1/temp", b"71.5"), (f"{topic_prefix}/boiler1/raw", b"\x00\xff\x10")]
    publish.multiple([{"topic": topic, "payload": payload, "qos": 1, "retain": True} for topic, payload in messages],
                     hostname=MQTT_BROKER[0], port=MQTT_BROKER[1])
    yield messages
    publish.multiple([{"topic": topic, "payload": b"", "qos": 1, "retain": True} for topic, _payload in messages],
                     hostname=MQTT_BROKER[0], port=MQTT_BROKER[1])


def test_topic_discovery_lists_topics_with_sample(alpha_api, topic_prefix, retained_topics):
    device = DeviceFactory(protocol="mqtt", host=MQTT_BROKER[0], port=MQTT_BROKER[1])

    response = alpha_api.get(browse_url(device), {"topic": f"{topic_prefix}/#", "seconds": "1"})

    assert response.status_code == 200
    assert response.data["results"] == [
        {"topic": f"{topic_prefix}/boiler1/raw", "sample_payload": "0x00ff10", "message_count": 1},
        {"topic": f"{topic_prefix}/boiler1/temp", "sample_payload": "71.5", "message_count": 1},
    ]


def test_topic_discovery_counts_live_messages(alpha_api, topic_prefix):
    device = DeviceFactory(protocol="mqtt", host=MQTT_BROKER[0], port=MQTT_BROKER[1])
    topic = f"{topic_prefix}/live"

    async def publish_during_discovery():
        discovery = TopicDiscovery(device, f"{topic_prefix}/#", schema="alpha")
        listening = asyncio.create_task(discovery.listen(1.5))
        async with asyncio.timeout(5):
            while not discovery.connected:
                await asyncio.sleep(0.02)
        await asyncio.to_thread(publish.multiple, [{"topic": topic, "payload": str(n), "qos": 1} for n in range(3)],
                                hostname=MQTT_BROKER[0], port=MQTT_BROKER[1])
        return await listening

    [seen] = asyncio.run(publish_during_discovery())

    assert seen.topic == topic
    assert seen.message_count == 3
    assert seen.sample_payload == "0"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"topic": "plant/#/temp"}, "#"),
        ({"seconds": "0"}, "Listening time 0.0 s is invalid"),
        ({"seconds": "31"}, "at most 30 s"),
        ({"seconds": "soon"}, "'soon' is not a number of seconds"),
    ],
)
def test_topic_discovery_rejects_invalid_query(alpha_api, query, message):
    device = DeviceFactory(protocol="mqtt", host=MQTT_BROKER[0], port=MQTT_BROKER[1])

    response = alpha_api.get(browse_url(device), query)

    assert response.status_code == 400
    assert message in str(response.data)
