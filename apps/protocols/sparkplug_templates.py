"""Device profiles as Sparkplug B template definitions in JSON.

The JSON follows the field names of Eclipse Tahu's JSON form of a Sparkplug B metric
(``name``, ``dataType``, ``properties``, ``value``) and template (``version``,
``templateRef``, ``isDefinition``, ``metrics``, ``parameters``). One profile becomes one
template definition; each point becomes one member metric named after its sensor key.
The mapping of data types is in docs/device-profiles.md.
"""

import json

from .choices import DataType, Dnp3PointType, Protocol

# The Sparkplug B data type that carries the engineering value of a Modbus register
# unchanged, used only when the point applies no scale, offset or scale factor.
MODBUS_INTEGER_TYPES = {
    DataType.INT16: "Int16",
    DataType.UINT16: "UInt16",
    DataType.INT32: "Int32",
    DataType.UINT32: "UInt32",
    DataType.INT64: "Int64",
    DataType.UINT64: "UInt64",
}
DNP3_TYPES = {
    Dnp3PointType.BINARY_INPUT: "Boolean",
    Dnp3PointType.BINARY_OUTPUT_STATUS: "Boolean",
    # 0 intermediate, 1 off, 2 on, 3 indeterminate (IEEE 1815 double-bit binary states).
    Dnp3PointType.DOUBLE_BIT_BINARY: "UInt8",
    Dnp3PointType.COUNTER: "UInt32",
    Dnp3PointType.FROZEN_COUNTER: "UInt32",
}
TEMPLATE_VERSION = "thermacore-profile-1"


def sparkplug_datatype(protocol, point):
    """Return the Sparkplug B data type name of one profile point's engineering value."""
    if protocol == Protocol.MODBUS_TCP:
        data_type = point.get("data_type", DataType.UINT16)
        if data_type in (DataType.BOOL, DataType.BIT):
            return "Boolean"
        unscaled = point.get("scale", 1) == 1 and point.get("offset", 0) == 0 and point.get("scale_factor_address") is None
        if unscaled and data_type in MODBUS_INTEGER_TYPES:
            return MODBUS_INTEGER_TYPES[data_type]
        if unscaled and data_type == DataType.FLOAT32:
            return "Float"
        return "Double"
    if protocol == Protocol.DNP3:
        unscaled = point.get("scale", 1) == 1 and point.get("offset", 0) == 0
        if unscaled and point.get("dnp3_type") in DNP3_TYPES:
            return DNP3_TYPES[point["dnp3_type"]]
    # MQTT and OPC UA values, and scaled DNP3 values, arrive as floating point numbers.
    return "Double"


def _property(type_name, value):
    return {"type": type_name, "value": value}


def template_metric(protocol, entry):
    """Return the member metric of one profile point: its name, data type and engineering properties."""
    sensor = entry["sensor"]
    properties = {"description": _property("String", sensor["name"]), "quantity": _property("String", sensor["quantity"])}
    if sensor.get("unit"):
        properties["engUnit"] = _property("String", sensor["unit"])
    if sensor.get("minimum") is not None:
        properties["engLow"] = _property("Double", float(sensor["minimum"]))
    if sensor.get("maximum") is not None:
        properties["engHigh"] = _property("Double", float(sensor["maximum"]))
    return {
        "name": sensor["key"],
        "dataType": sparkplug_datatype(protocol, entry["point"]),
        "isNull": True,
        "properties": properties,
        "value": None,
    }


def sparkplug_template(profile):
    """Return the Sparkplug B template definition metric of a parsed profile as a dict."""
    parameters = [
        {"name": name, "type": "String", "value": value}
        for name, value in (("manufacturer", profile.manufacturer), ("model", profile.model),
                            ("protocol", profile.protocol))
        if value
    ]
    return {
        "name": profile.name,
        "dataType": "Template",
        "value": {
            "version": TEMPLATE_VERSION,
            "templateRef": None,
            "isDefinition": True,
            "metrics": [template_metric(profile.protocol, entry) for entry in profile.points],
            "parameters": parameters,
        },
    }


def sparkplug_template_json(profile):
    """Return the Sparkplug B template definition of ``profile`` as indented JSON text."""
    return json.dumps(sparkplug_template(profile), indent=2, ensure_ascii=False) + "\n"
