"""Profile imports reject NUL characters, which PostgreSQL cannot store, and too deep nesting, on every path."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from apps.protocols.models import Point
from apps.protocols.profiles import ProfileError, parse_profile
from apps.sensors.models import Sensor
from tests.factories import DeviceFactory, UnitFactory

from .test_profiles import VALID

# A JSON profile whose point name starts with NUL, which JSON writes as \u0000.
NUL_NAME_JSON = json.dumps({
    "profile": 1, "name": "Boiler", "protocol": "modbus_tcp",
    "points": [{"key": "t3", "name": "\u0000T3", "quantity": "temperature", "register_type": "holding",
                "address": 0, "data_type": "float32"}],
})


def issues_of(text):
    with pytest.raises(ProfileError) as caught:
        parse_profile(text)
    return [(issue.line, issue.field) for issue in caught.value.issues], str(caught.value)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (NUL_NAME_JSON, "points[0].name"),
        (VALID.replace("name: Supply temperature", 'name: "Supply\\0temperature"'), "points[0].name"),
        (VALID.replace("unit: °C", 'unit: "°C\\u0000"'), "points[0].unit"),
        (VALID.replace("name: Test boiler controller", 'name: "Test\\0"'), "name"),
        (VALID.replace("protocol: modbus_tcp", 'protocol: modbus_tcp\ndescription: "a\\0b"'), "description"),
        (VALID.replace("byte_order: CDAB", '"by\\0te": CDAB'), "points[0].by\\0te"),
    ],
)
def test_parse_rejects_null_character(text, field):
    issues, message = issues_of(text)

    assert [name for _line, name in issues] == [field]
    assert "NUL character" in message


def test_parse_rejects_deep_nesting():
    issues, message = issues_of("[" * 5000 + "]" * 5000)

    assert issues == [(1, "")]
    assert "nested too deeply" in message


def test_api_import_rejects_null_character(alpha_api):
    device, unit = DeviceFactory(), UnitFactory()

    response = alpha_api.post(f"/api/v1/devices/{device.pk}/profile/", {"unit": unit.pk, "profile": NUL_NAME_JSON},
                              format="json")

    assert response.status_code == 400, response.content[:300]
    assert response.data["profile"][0]["field"] == "points[0].name"
    assert "NUL character" in response.data["profile"][0]["message"]
    assert not Sensor.objects.filter(unit=unit).exists()


def test_command_import_rejects_null_character(alpha, tmp_path):
    path = tmp_path / "nul.json"
    path.write_text(NUL_NAME_JSON)

    with pytest.raises(CommandError, match="points\\[0\\].name: .*NUL character"):
        call_command("device_profile", "import", str(path), "--schema", "alpha", "--device",
                     str(DeviceFactory().pk), "--unit", str(UnitFactory().pk))


def test_admin_import_rejects_null_character(alpha_client):
    device, unit = DeviceFactory(), UnitFactory()
    upload = SimpleUploadedFile("nul.json", NUL_NAME_JSON.encode(), content_type="application/json")

    response = alpha_client.post(f"/admin/protocols/device/{device.pk}/profile/import/",
                                 {"unit": unit.pk, "profile_file": upload})

    assert response.status_code == 200
    assert "NUL character" in response.content.decode()
    assert not Point.objects.filter(device=device).exists()
