"""Device profiles: parsing with line-numbered errors, shipped profiles, apply, export, command and API."""

import json
import struct
import textwrap

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F

from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.audit.services import Actor
from apps.protocols.models import Point
from apps.protocols.polling import poll_due_devices
from apps.protocols.profiles import (
    SHIPPED_PROFILES_DIR,
    ProfileError,
    apply_profile,
    export_profile,
    load_shipped_profile,
    parse_profile,
)
from apps.protocols.simulator.plant import PLANT
from apps.protocols.sparkplug_templates import sparkplug_template
from apps.sensors.models import Sensor
from apps.sensors.quality import Quality
from apps.telemetry.models import Reading
from tests.factories import DeviceFactory, UnitFactory

ACTOR = Actor.system_job("tests.device_profile")

VALID = textwrap.dedent("""\
    profile: 1
    name: Test boiler controller
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
        data_type: float32
        byte_order: CDAB
      - key: burner_on
        name: Burner on
        quantity: state
        register_type: coil
        address: 3
        data_type: bool
    """)


def issues_of(text):
    with pytest.raises(ProfileError) as caught:
        parse_profile(text)
    return [(issue.line, issue.field) for issue in caught.value.issues], str(caught.value)


def test_parse_valid_profile():
    profile = parse_profile(VALID)

    assert profile.name == "Test boiler controller"
    assert profile.protocol == "modbus_tcp"
    assert profile.points[0]["sensor"] == {"key": "supply_temp", "name": "Supply temperature",
                                           "quantity": "temperature", "unit": "°C", "minimum": -20, "maximum": 120}
    assert profile.points[0]["point"] == {"register_type": "holding", "address": 0, "data_type": "float32",
                                          "byte_order": "CDAB"}


def test_parse_json_profile():
    text = ('{"profile": 1, "name": "Meter", "protocol": "mqtt", "points": [{"key": "power", "name": "Power", '
            '"quantity": "power", "topic": "site/+/power", "json_path": "$.w"}]}')

    assert parse_profile(text).points[0]["point"] == {"topic": "site/+/power", "json_path": "$.w"}


@pytest.mark.parametrize(
    ("change", "expected_line", "expected_field", "message"),
    [
        (("address: 0", "adress: 0"), 12, "points[0].adress", "unknown field"),
        (("address: 0", "address: zero"), 12, "points[0].address", "'zero' is not an integer"),
        (("data_type: float32", "data_type: real"), 13, "points[0].data_type", "'real' is not a valid choice"),
        (("quantity: state", "quantity: mood"), 17, "points[1].quantity", "quantity 'mood' is unknown"),
        (("data_type: bool", "data_type: uint16"), 20, "points[1].data_type", "use 'bool'"),
        (("maximum: 120", "maximum: -30"), 10, "points[0].maximum", "must be greater than minimum"),
        (("protocol: modbus_tcp", "protocol: bacnet"), 3, "protocol", "protocol 'bacnet' is unknown"),
        (("profile: 1", "profile: 2"), 1, "profile", "format version 2 is not supported"),
        (("key: burner_on", "key: supply_temp"), 15, "points[1].key", "repeats points[0]"),
        (("  - key: burner_on\n", "  - key: burner_on\n    topic: a/b\n"), 16, "points[1].topic", "unknown field"),
    ],
)
def test_parse_error_names_line_and_field(change, expected_line, expected_field, message):
    old, new = change

    issues, text = issues_of(VALID.replace(old, new, 1))

    assert (expected_line, expected_field) in issues
    assert message in text


def test_parse_reports_every_fault():
    text = VALID.replace("address: 0", "address: -1").replace("quantity: state", "quantity: mood")

    issues, _ = issues_of(text)

    assert [line for line, _ in issues] == [12, 17]


def test_parse_missing_fields():
    issues, text = issues_of("profile: 1\nname: X\nprotocol: mqtt\npoints:\n  - key: a\n    name: A\n")

    assert (5, "points[0].quantity") in issues
    assert "missing" in text


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("profile: 1\nname: [unclosed\n", 3, "not valid YAML"),
        ("- just\n- a list\n", 1, "a profile is a mapping"),
        ("profile: 1\nname: X\nprotocol: mqtt\npoints: []\n", 4, "at least one point"),
    ],
)
def test_parse_invalid_documents(text, line, message):
    issues, error = issues_of(text)

    assert issues[0][0] == line
    assert message in error


@pytest.mark.parametrize("name", sorted(path.stem for path in SHIPPED_PROFILES_DIR.glob("*.yaml")))
def test_shipped_profiles_are_valid(name):
    assert load_shipped_profile(name).points


def test_shipped_profile_set():
    names = {path.stem for path in SHIPPED_PROFILES_DIR.glob("*.yaml")}

    assert names == {"simulator_boiler", "simulator_chiller", "simulator_heat_pump", "sunspec_inverter_103",
                     "eastron_sdm630"}


@pytest.mark.parametrize("unit", PLANT, ids=[unit.kind for unit in PLANT])
def test_simulator_profiles_match_plant(unit):
    profile = load_shipped_profile(f"simulator_{unit.kind}")

    by_key = {entry["sensor"]["key"]: entry for entry in profile.points}
    assert set(by_key) == {point.key for point in unit.points}
    for simulated in unit.points:
        entry = by_key[simulated.key]
        assert entry["point"]["address"] == simulated.address, simulated.key
        assert entry["point"]["data_type"] == simulated.data_type, simulated.key
        assert entry["point"].get("byte_order", "ABCD") == simulated.byte_order, simulated.key
        assert entry["point"].get("scale", 1.0) == simulated.scale, simulated.key
        assert entry["sensor"]["maximum"] == simulated.maximum, simulated.key


def test_apply_profile_creates_and_updates(alpha):
    device = DeviceFactory()
    unit = UnitFactory()
    profile = parse_profile(VALID)

    first = apply_profile(profile, device=device, unit=unit, actor=ACTOR)
    second = apply_profile(parse_profile(VALID.replace("address: 0", "address: 40")), device=device, unit=unit,
                           actor=ACTOR)

    assert (first.points_created, first.sensors_created) == (2, 2)
    assert (second.points_created, second.points_updated) == (0, 2)
    assert Point.objects.get(device=device, sensor__key="supply_temp").address == 40
    assert Sensor.objects.get(unit=unit, key="supply_temp").engineering_unit == "°C"
    entry = AuditEntry.objects.filter(action=AuditAction.OBJECTS_IMPORTED).first()
    assert entry.detail["profile"] == "Test boiler controller"
    assert entry.object_id == str(device.pk)


def test_apply_profile_to_device_of_other_protocol(alpha):
    device = DeviceFactory(protocol="mqtt")

    with pytest.raises(ProfileError, match="is for modbus_tcp, but device"):
        apply_profile(parse_profile(VALID), device=device, unit=UnitFactory(), actor=ACTOR)

    assert not Point.objects.filter(device=device).exists()


def test_export_round_trip(alpha):
    device = DeviceFactory(name="Boiler 7 controller")
    apply_profile(load_shipped_profile("simulator_boiler"), device=device, unit=UnitFactory(), actor=ACTOR)

    exported = parse_profile(export_profile(device))

    original = load_shipped_profile("simulator_boiler")
    assert exported.name == "Boiler 7 controller"
    assert len(exported.points) == len(original.points)
    for mine, theirs in zip(exported.points, original.points, strict=True):
        assert {**mine["point"], "enabled": True} == {"byte_order": "ABCD", "scale": 1.0, "offset": 0.0,
                                                       **theirs["point"], "enabled": True}
        assert mine["sensor"]["key"] == theirs["sensor"]["key"]


def test_sunspec_profile_applies_scale_factors(alpha, register_server):
    device = DeviceFactory(port=register_server.port, unit_id=1)
    apply_profile(load_shipped_profile("sunspec_inverter_103"), device=device, unit=UnitFactory(), actor=ACTOR)
    # Register values of a real inverter, shifted down by 40000 to fit the test server.
    Point.objects.filter(device=device).update(address=F("address") - 40000,
                                               scale_factor_address=F("scale_factor_address") - 40000)
    register_server.set("holding", 72, [1234, 411, 412, 411, 0xFFFE])
    register_server.set("holding", 80, [2301, 2302, 2303, 0xFFFF])
    register_server.set("holding", 84, [5230, 0, 5001, 0xFFFE])
    register_server.set("holding", 92, [0x8000, 0])

    poll_due_devices()

    def value(key):
        return Reading.objects.get(sensor__key=key, sensor__points__device=device)

    assert value("ac_current").value == pytest.approx(12.34)
    assert value("voltage_an").value == pytest.approx(230.1)
    assert value("ac_power").value == 5230
    assert value("frequency").value == pytest.approx(50.01)
    assert value("power_factor").quality == Quality.BAD_NOT_IMPLEMENTED


def float32_registers(*values):
    words = struct.unpack(f">{2 * len(values)}H", struct.pack(f">{len(values)}f", *values))
    return list(words)


def test_eastron_profile_reads_three_phase_meter(alpha, register_server):
    device = DeviceFactory(port=register_server.port, unit_id=1)
    apply_profile(load_shipped_profile("eastron_sdm630"), device=device, unit=UnitFactory(), actor=ACTOR)
    # Input registers of a loaded meter: phase voltages, currents and powers, total power, frequency, energies.
    register_server.set("input", 0, float32_registers(230.5, 231.0, 229.5, 10.25, 11.5, 9.75, 2300, 2600, 2200))
    register_server.set("input", 52, float32_registers(7100))
    register_server.set("input", 70, float32_registers(50.0, 12345.5, 0.0))

    poll_due_devices()

    def value(key):
        return Reading.objects.get(sensor__key=key, sensor__points__device=device)

    assert value("voltage_l1").value == pytest.approx(230.5)
    assert value("voltage_l3").value == pytest.approx(229.5)
    assert value("current_l2").value == pytest.approx(11.5)
    assert value("power_l3").value == pytest.approx(2200)
    assert value("power_total").value == pytest.approx(7100)
    assert value("frequency").value == pytest.approx(50.0)
    assert value("import_energy").value == pytest.approx(12345.5)
    assert value("export_energy").value == 0.0
    assert Reading.objects.filter(sensor__points__device=device, quality=Quality.GOOD).count() == 13
    assert register_server.read_requests() == [(4, 0, 18), (4, 52, 2), (4, 70, 6)]


def test_command_import_and_export(alpha, tmp_path, capsys):
    device = DeviceFactory()
    unit = UnitFactory()
    path = tmp_path / "meter.yaml"

    call_command("device_profile", "import", "shipped:eastron_sdm630", "--schema", "alpha", "--device",
                 str(device.pk), "--unit", str(unit.pk))
    call_command("device_profile", "export", "--schema", "alpha", "--device", str(device.pk), "--output", str(path))

    assert "13 points created" in capsys.readouterr().out
    assert len(parse_profile(path.read_text()).points) == 13


def test_command_reports_invalid_profile(alpha, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(VALID.replace("address: 0", "address: zero"))

    with pytest.raises(CommandError, match="line 12, points\\[0\\].address: 'zero' is not an integer"):
        call_command("device_profile", "import", str(path), "--schema", "alpha", "--device",
                     str(DeviceFactory().pk), "--unit", str(UnitFactory().pk))


def test_command_exports_sparkplug_template(alpha, tmp_path, capsys):
    device = DeviceFactory(name="Meter 4")
    apply_profile(load_shipped_profile("eastron_sdm630"), device=device, unit=UnitFactory(), actor=ACTOR)
    path = tmp_path / "meter-template.json"

    call_command("device_profile", "export", "--schema", "alpha", "--device", str(device.pk), "--format",
                 "sparkplug", "--output", str(path))
    call_command("device_profile", "export", "--schema", "alpha", "--device", str(device.pk), "--format",
                 "sparkplug")

    template = json.loads(path.read_text())
    assert capsys.readouterr().out == path.read_text()
    assert template == sparkplug_template(parse_profile(export_profile(device)))
    assert template["name"] == "Meter 4"
    assert template["dataType"] == "Template"
    assert template["value"]["isDefinition"] is True
    metrics = {metric["name"]: metric for metric in template["value"]["metrics"]}
    assert len(metrics) == 13
    assert metrics["power_total"]["dataType"] == "Float"
    assert metrics["power_total"]["properties"]["engUnit"] == {"type": "String", "value": "W"}


def test_command_sparkplug_export_without_points(alpha):
    device = DeviceFactory()

    with pytest.raises(CommandError, match=f"Device {device.pk} has no valid Sparkplug B template"):
        call_command("device_profile", "export", "--schema", "alpha", "--device", str(device.pk), "--format",
                     "sparkplug")


def test_command_rejects_unknown_export_format(alpha):
    with pytest.raises(CommandError, match="invalid choice: 'xml'"):
        call_command("device_profile", "export", "--schema", "alpha", "--device", str(DeviceFactory().pk),
                     "--format", "xml")


def test_api_profile_import_and_export(alpha_api):
    device = DeviceFactory()
    unit = UnitFactory()

    imported = alpha_api.post(f"/api/v1/devices/{device.pk}/profile/", {"unit": unit.pk, "profile": VALID},
                              format="json")
    exported = alpha_api.get(f"/api/v1/devices/{device.pk}/profile/")

    assert imported.status_code == 200, imported.data
    assert imported.data["points_created"] == 2
    assert exported.status_code == 200
    assert exported["Content-Type"].startswith("application/yaml")
    assert len(parse_profile(exported.content.decode()).points) == 2


def test_api_profile_errors_name_lines(alpha_api):
    device = DeviceFactory()

    response = alpha_api.post(
        f"/api/v1/devices/{device.pk}/profile/",
        {"unit": UnitFactory().pk, "profile": VALID.replace("address: 0", "address: zero")}, format="json",
    )

    assert response.status_code == 400
    assert response.data["profile"][0] == {"line": 12, "field": "points[0].address",
                                           "message": "'zero' is not an integer"}
