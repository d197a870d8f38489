"""Point validation messages name plain values, never Python enum reprs."""

import pytest

from tests.factories import DeviceFactory, SensorFactory


def _dnp3_analog_output(alpha_api, **fields):
    body = {"device": DeviceFactory(protocol="dnp3").id, "sensor": SensorFactory().id,
            "dnp3_type": "analog_output_status", "dnp3_index": 0, **fields}
    return alpha_api.post("/api/v1/points/", body, format="json")


def test_analog_output_without_data_type_names_default(alpha_api):
    response = _dnp3_analog_output(alpha_api)

    message = str(response.data["data_type"])
    assert response.status_code == 400
    assert "DataType" not in message
    assert "'int32' (group 41 var 1), 'int16' (var 2) or 'float32' (var 3)" in message
    assert "'uint16', the default when data_type is not given" in message


def test_analog_output_with_wrong_data_type_names_it(alpha_api):
    response = _dnp3_analog_output(alpha_api, data_type="float64")

    message = str(response.data["data_type"])
    assert response.status_code == 400
    assert "has 'float64';" in message
    assert "default" not in message


def test_analog_output_with_block_data_type_is_created(alpha_api):
    response = _dnp3_analog_output(alpha_api, data_type="int16")

    assert response.status_code == 201, response.data


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"register_type": "coil", "address": 1}, "data_type"),
        ({"register_type": "holding", "address": 1, "bit": 3}, "bit"),
    ],
)
def test_modbus_point_messages_show_plain_data_type(alpha_api, fields, field):
    body = {"device": DeviceFactory().id, "sensor": SensorFactory().id, **fields}

    response = alpha_api.post("/api/v1/points/", body, format="json")

    assert response.status_code == 400
    assert "DataType" not in str(response.data[field])
    assert "'uint16'" in str(response.data[field])
