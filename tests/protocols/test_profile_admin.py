"""Device profile import and export in the admin, and profiles as Sparkplug B templates."""

import json
import textwrap

from django.core.files.uploadedfile import SimpleUploadedFile

from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.protocols.models import Point
from apps.protocols.profiles import SHIPPED_PROFILES_DIR, load_shipped_profile, parse_profile
from apps.protocols.sparkplug_templates import sparkplug_datatype, sparkplug_template
from apps.sensors.models import Sensor
from tests.factories import DeviceFactory, PointFactory, SensorFactory, UnitFactory

PROFILE = textwrap.dedent("""\
    profile: 1
    name: Test boiler controller
    manufacturer: Acme
    protocol: modbus_tcp
    points:
      - key: supply_temp
        name: Supply temperature
        quantity: temperature
        unit: °C
        minimum: -20
        maximum: 120
        register_type: holding
        address: 0
        data_type: int16
        scale: 0.1
      - key: burner_on
        name: Burner on
        quantity: state
        register_type: coil
        address: 3
        data_type: bool
""")

INVALID = textwrap.dedent("""\
    profile: 1
    name: Broken
    protocol: modbus_tcp
    points:
      - key: supply_temp
        name: Supply temperature
        quantity: mood
        address: zero
""")


def upload(text, name="profile.yaml"):
    return SimpleUploadedFile(name, text.encode(), content_type="application/yaml")


def import_url(device):
    return f"/admin/protocols/device/{device.pk}/profile/import/"


def test_import_preview_lists_points_without_storing(alpha_client):
    device, unit = DeviceFactory(), UnitFactory()
    SensorFactory(unit=unit, key="supply_temp")

    response = alpha_client.post(import_url(device), {"unit": unit.pk, "profile_file": upload(PROFILE)})

    page = response.content.decode()
    assert response.status_code == 200
    assert 'id="profile-preview"' in page
    assert "supply_temp" in page
    assert "burner_on" in page
    rows = {row.key: row for row in response.context["preview"]}
    assert rows["supply_temp"].sensor_action == "update"
    assert rows["burner_on"].sensor_action == "create"
    assert rows["burner_on"].point_action == "create"
    assert "address 3" in rows["burner_on"].address
    assert not Point.objects.filter(device=device).exists()


def test_import_apply_creates_points_and_audits(alpha_client):
    device, unit = DeviceFactory(), UnitFactory()

    response = alpha_client.post(
        import_url(device), {"unit": unit.pk, "profile_text": PROFILE, "apply": "Apply the profile"}
    )

    assert response.status_code == 302
    assert Point.objects.filter(device=device).count() == 2
    assert Sensor.objects.get(unit=unit, key="supply_temp").engineering_unit == "°C"
    entry = AuditEntry.objects.filter(action=AuditAction.OBJECTS_IMPORTED).latest("pk")
    assert entry.detail["profile"] == "Test boiler controller"
    assert entry.detail["points_created"] == 2


def test_import_errors_name_line_and_field(alpha_client):
    device, unit = DeviceFactory(), UnitFactory()

    response = alpha_client.post(import_url(device), {"unit": unit.pk, "profile_file": upload(INVALID)})

    page = response.content.decode()
    assert response.status_code == 200
    assert 'id="profile-issues"' in page
    issues = {(issue.line, issue.field) for issue in response.context["issues"]}
    assert (7, "points[0].quantity") in issues
    assert (8, "points[0].address") in issues
    assert not Point.objects.filter(device=device).exists()


def test_import_rejects_wrong_protocol(alpha_client):
    device, unit = DeviceFactory(protocol="mqtt", port=1883), UnitFactory()

    response = alpha_client.post(import_url(device), {"unit": unit.pk, "profile_file": upload(PROFILE)})

    messages = [issue.message for issue in response.context["issues"]]
    assert any("is for modbus_tcp" in message for message in messages), messages
    assert not Sensor.objects.filter(unit=unit).exists()


def test_import_rejects_non_utf8_file(alpha_client):
    device, unit = DeviceFactory(), UnitFactory()
    latin1 = SimpleUploadedFile("profile.yaml", "name: Kessel \xe4".encode("latin-1"))

    response = alpha_client.post(import_url(device), {"unit": unit.pk, "profile_file": latin1})

    assert "is not UTF-8 text" in response.content.decode()


def test_export_views_download_profile_and_template(alpha_client):
    point = PointFactory(address=10, data_type="float32")

    yaml_response = alpha_client.get(f"/admin/protocols/device/{point.device_id}/profile/export/")
    json_response = alpha_client.get(f"/admin/protocols/device/{point.device_id}/profile/sparkplug/")

    assert yaml_response.status_code == 200
    assert parse_profile(yaml_response.content.decode()).points[0]["point"]["address"] == 10
    assert json_response.status_code == 200
    template = json.loads(json_response.content)
    assert template["dataType"] == "Template"
    assert template["value"]["metrics"][0]["name"] == point.sensor.key
    assert template["value"]["metrics"][0]["dataType"] == "Float"


def test_sparkplug_export_of_device_without_points(alpha_client):
    device = DeviceFactory()

    response = alpha_client.get(f"/admin/protocols/device/{device.pk}/profile/sparkplug/", follow=True)

    assert "has no valid profile to export" in response.content.decode()


def test_change_form_links_import_and_exports(alpha_client):
    device = DeviceFactory()

    page = alpha_client.get(f"/admin/protocols/device/{device.pk}/change/").content.decode()

    assert f"/admin/protocols/device/{device.pk}/profile/import/" in page
    assert f"/admin/protocols/device/{device.pk}/profile/sparkplug/" in page


def test_sparkplug_template_maps_names_and_types():
    template = sparkplug_template(parse_profile(PROFILE))

    value = template["value"]
    assert template["name"] == "Test boiler controller"
    assert value["isDefinition"] is True
    assert {"name": "manufacturer", "type": "String", "value": "Acme"} in value["parameters"]
    supply, burner = value["metrics"]
    assert supply["name"] == "supply_temp"
    # A scaled int16 register carries a fractional engineering value.
    assert supply["dataType"] == "Double"
    assert supply["properties"]["engUnit"] == {"type": "String", "value": "°C"}
    assert supply["properties"]["engLow"] == {"type": "Double", "value": -20.0}
    assert burner["dataType"] == "Boolean"


def test_sparkplug_datatypes_per_protocol():
    cases = [
        ("modbus_tcp", {"data_type": "uint16"}, "UInt16"),
        ("modbus_tcp", {"data_type": "int32"}, "Int32"),
        ("modbus_tcp", {"data_type": "uint16", "scale_factor_address": 5}, "Double"),
        ("modbus_tcp", {"data_type": "float64"}, "Double"),
        ("modbus_tcp", {"data_type": "bit", "bit": 2}, "Boolean"),
        ("dnp3", {"dnp3_type": "binary_input", "dnp3_index": 0}, "Boolean"),
        ("dnp3", {"dnp3_type": "counter", "dnp3_index": 0}, "UInt32"),
        ("dnp3", {"dnp3_type": "analog_input", "dnp3_index": 0}, "Double"),
        ("opcua", {"node_id": "ns=2;i=5"}, "Double"),
        ("mqtt", {"topic": "a/b"}, "Double"),
    ]
    for protocol, point, expected in cases:
        assert sparkplug_datatype(protocol, point) == expected, (protocol, point)


def test_every_shipped_profile_exports_as_template():
    for path in sorted(SHIPPED_PROFILES_DIR.glob("*.yaml")):
        profile = load_shipped_profile(path.stem)

        template = sparkplug_template(profile)

        names = [metric["name"] for metric in template["value"]["metrics"]]
        assert names == [entry["sensor"]["key"] for entry in profile.points], path.name
        json.dumps(template)
