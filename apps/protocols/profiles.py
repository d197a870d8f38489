"""Device profiles: the points of a device type as a YAML (or JSON) document.

A profile names a protocol and lists points; each point describes its sensor (key, name,
quantity, unit, range) and its protocol address. ``parse_profile`` checks a document and
reports every fault with its line and field, ``apply_profile`` creates or updates the
sensors of a unit and the points of a device from it, and ``export_profile`` writes the
profile of an existing device. The format is documented in docs/device-profiles.md.
"""

import logging
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import yaml
from django.core.exceptions import ValidationError
from django.db import transaction

from apps.audit import services as audit
from apps.audit.choices import AuditAction
from apps.sensors.choices import Quantity
from apps.sensors.models import Sensor
from apps.tenants.quotas import check_quota, quota_for_model

from .choices import Protocol
from .models import Device, Point

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SHIPPED_PROFILES_DIR = Path(__file__).resolve().parent / "profile_files"

PROFILE_FIELDS = ("profile", "name", "manufacturer", "model", "protocol", "description", "points")
SENSOR_FIELDS = {"key": "key", "name": "name", "quantity": "quantity", "unit": "engineering_unit",
                 "minimum": "minimum", "maximum": "maximum", "decimals": "decimals"}
COMMON_POINT_FIELDS = ("scale", "offset", "enabled")
PROTOCOL_POINT_FIELDS = {
    Protocol.MODBUS_TCP: ("register_type", "address", "data_type", "byte_order", "bit", "scale_factor_address"),
    Protocol.MQTT: ("topic", "json_path", "timestamp_path"),
    Protocol.OPCUA: ("node_id", "sampling_interval_ms", "deadband"),
    Protocol.DNP3: ("dnp3_type", "dnp3_index"),
}
NUMBER_FIELDS = {"minimum", "maximum", "scale", "offset", "sampling_interval_ms", "deadband"}
INTEGER_FIELDS = {"decimals", "address", "bit", "scale_factor_address", "dnp3_index"}
TEXT_FIELDS = {"key", "name", "quantity", "unit", "register_type", "data_type", "byte_order", "topic",
               "json_path", "timestamp_path", "node_id", "dnp3_type"}


@dataclass(frozen=True)
class ProfileIssue:
    """One fault of a profile document, at a 1-based line."""

    line: int
    field: str
    message: str

    def __str__(self):
        where = f"line {self.line}" + (f", {self.field}" if self.field else "")
        return f"{where}: {self.message}"


class ProfileError(ValueError):
    """A profile document is invalid; ``issues`` lists every fault found."""

    def __init__(self, issues):
        self.issues = list(issues)
        super().__init__("Invalid device profile: " + "; ".join(str(issue) for issue in self.issues))


@dataclass
class Profile:
    name: str
    protocol: str
    manufacturer: str = ""
    model: str = ""
    description: str = ""
    points: list = field(default_factory=list)


@dataclass
class ApplyResult:
    sensors_created: int = 0
    sensors_updated: int = 0
    points_created: int = 0
    points_updated: int = 0


def parse_profile(text):
    """Return the Profile of a YAML or JSON document; raise ProfileError listing every fault by line and field."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            document = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ProfileError([ProfileIssue(mark.line + 1 if mark else 1, "", f"not valid YAML: {exc.problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ProfileError([ProfileIssue(1, "", f"not valid YAML: {exc}")]) from exc
    except RecursionError:
        # PyYAML composes and constructs nested nodes recursively.
        raise ProfileError([ProfileIssue(1, "", "not valid YAML: nested too deeply; a profile needs only a few levels")]) from None

    issues = []
    if not isinstance(document, dict):
        raise ProfileError([ProfileIssue(1, "", "a profile is a mapping with name, protocol and points")])
    lines = _LineIndex(root)
    # PostgreSQL text and jsonb cannot store NUL, which YAML can write as "\0" or "\u0000".
    null_issues = _null_character_issues(document, lines)
    if null_issues:
        raise ProfileError(null_issues)

    for key in document:
        if key not in PROFILE_FIELDS:
            issues.append(ProfileIssue(lines.of(key), str(key), f"unknown field; use {', '.join(PROFILE_FIELDS)}"))
    version = document.get("profile")
    if version != FORMAT_VERSION:
        issues.append(ProfileIssue(lines.of("profile"), "profile",
                                   f"format version {version!r} is not supported; set 'profile: {FORMAT_VERSION}'"))
    name = document.get("name")
    if not isinstance(name, str) or not name.strip():
        issues.append(ProfileIssue(lines.of("name"), "name", "a profile needs a name"))
    protocol = document.get("protocol")
    if protocol not in PROTOCOL_POINT_FIELDS:
        issues.append(ProfileIssue(lines.of("protocol"), "protocol",
                                   f"protocol {protocol!r} is unknown; use one of {', '.join(PROTOCOL_POINT_FIELDS)}"))
    raw_points = document.get("points")
    if not isinstance(raw_points, list) or not raw_points:
        issues.append(ProfileIssue(lines.of("points"), "points", "a profile needs a list of at least one point"))
        raw_points = []

    points = []
    if protocol in PROTOCOL_POINT_FIELDS:
        seen_keys = {}
        for index, raw in enumerate(raw_points):
            point = _check_point(raw, index, protocol, lines, issues)
            if point is None:
                continue
            key = point["sensor"].get("key")
            if key in seen_keys:
                issues.append(ProfileIssue(lines.of("points", index, "key"), f"points[{index}].key",
                                           f"key {key!r} repeats points[{seen_keys[key]}]; each sensor key must be unique"))
            seen_keys.setdefault(key, index)
            points.append(point)
    if issues:
        raise ProfileError(sorted(issues, key=lambda issue: issue.line))
    return Profile(
        name=name.strip(), protocol=protocol, manufacturer=str(document.get("manufacturer") or ""),
        model=str(document.get("model") or ""), description=str(document.get("description") or ""), points=points,
    )


def load_shipped_profile(name):
    """Return the parsed profile ``name`` from the profiles that ship with ThermaCore."""
    path = SHIPPED_PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(item.stem for item in SHIPPED_PROFILES_DIR.glob("*.yaml")))
        raise LookupError(f"No shipped profile named {name!r}; use one of {known}.")
    return parse_profile(path.read_text(encoding="utf-8"))


@transaction.atomic
def apply_profile(profile, *, device, unit, actor):
    """Create or update the sensors of ``unit`` and the points of ``device`` that ``profile`` lists.

    Sensors are matched by key within the unit and points by device and sensor, so applying
    a profile again updates instead of duplicating. Raises ProfileError when the device's
    protocol differs from the profile's.
    """
    _check_protocol(profile, device)
    existing_keys = set(Sensor.objects.filter(unit=unit).values_list("key", flat=True))
    new_keys = {entry["sensor"]["key"] for entry in profile.points} - existing_keys
    # One check for the whole import, so an over-quota error says how many sensors it would add.
    check_quota(quota_for_model(Sensor), Sensor, adding=len(new_keys))
    result = ApplyResult()
    for entry in profile.points:
        sensor_values = {SENSOR_FIELDS[name]: value for name, value in entry["sensor"].items() if name != "key"}
        sensor, created = Sensor.objects.update_or_create(unit=unit, key=entry["sensor"]["key"], defaults=sensor_values)
        result.sensors_created += created
        result.sensors_updated += not created
        point, created = Point.objects.update_or_create(device=device, sensor=sensor, defaults=entry["point"])
        point.full_clean()
        result.points_created += created
        result.points_updated += not created

    audit.record(
        AuditAction.OBJECTS_IMPORTED,
        actor=actor,
        obj=device,
        detail={"profile": profile.name, "unit": unit.pk, **result.__dict__},
    )
    logger.info(
        "Profile %r applied to device %s and unit %s: %d points created, %d updated",
        profile.name, device.pk, unit.pk, result.points_created, result.points_updated,
    )
    return result


def export_profile(device):
    """Return the YAML profile of ``device`` with all its points, in the format parse_profile reads."""
    point_fields = PROTOCOL_POINT_FIELDS.get(device.protocol, ())
    points = []
    for point in Point.objects.filter(device=device).select_related("sensor").order_by("pk"):
        sensor = point.sensor
        entry = {name: getattr(sensor, attribute) for name, attribute in SENSOR_FIELDS.items()}
        entry.update({name: getattr(point, name) for name in point_fields})
        entry.update({name: getattr(point, name) for name in COMMON_POINT_FIELDS})
        points.append({name: _plain(value) for name, value in entry.items() if value not in (None, "")})
    document = {"profile": FORMAT_VERSION, "name": device.name, "protocol": _plain(device.protocol), "points": points}
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _plain(value):
    """Return choice members as their plain values, which YAML can represent."""
    return value.value if isinstance(value, Enum) else value


def _check_point(raw, index, protocol, lines, issues):
    """Return {"sensor": {...}, "point": {...}} for one point entry, or None after adding its issues."""
    prefix = f"points[{index}]"
    if not isinstance(raw, dict):
        issues.append(ProfileIssue(lines.of("points", index), prefix, "a point is a mapping of fields"))
        return None
    allowed = (*SENSOR_FIELDS, *COMMON_POINT_FIELDS, *PROTOCOL_POINT_FIELDS[protocol])
    count_before = len(issues)
    for name, value in raw.items():
        line = lines.of("points", index, name)
        if name not in allowed:
            issues.append(ProfileIssue(line, f"{prefix}.{name}",
                                       f"unknown field for protocol {protocol}; use {', '.join(allowed)}"))
        elif message := _type_error(name, value):
            issues.append(ProfileIssue(line, f"{prefix}.{name}", message))
    for required in ("key", "name", "quantity"):
        if required not in raw:
            issues.append(ProfileIssue(lines.of("points", index), f"{prefix}.{required}", "missing; every point needs it"))
    if raw.get("quantity") is not None and raw.get("quantity") not in Quantity.values:
        issues.append(ProfileIssue(lines.of("points", index, "quantity"), f"{prefix}.quantity",
                                   f"quantity {raw['quantity']!r} is unknown; use one of {', '.join(Quantity.values)}"))
    if len(issues) > count_before:
        return None

    sensor = {name: raw[name] for name in SENSOR_FIELDS if name in raw}
    point_values = {name: raw[name] for name in (*COMMON_POINT_FIELDS, *PROTOCOL_POINT_FIELDS[protocol]) if name in raw}
    _check_models(sensor, point_values, protocol, f"{prefix}.", lambda name: lines.of("points", index, name), issues)
    if len(issues) > count_before:
        return None
    return {"sensor": sensor, "point": point_values}


def _null_character_issues(document, lines):
    """Return an issue for each key or text value of ``document`` that contains a NUL character."""
    issues = []
    pending = [(document, ())]
    while pending:
        value, path = pending.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                if isinstance(key, str) and "\x00" in key:
                    issues.append(ProfileIssue(lines.of(*path, key), _field_name(path, key.replace("\x00", "\\0")),
                                               "field name contains a NUL character (\\0 or \\u0000); remove it"))
                pending.append((child, (*path, key)))
        elif isinstance(value, list):
            pending.extend((child, (*path, index)) for index, child in enumerate(value))
        elif isinstance(value, str) and "\x00" in value:
            issues.append(ProfileIssue(lines.of(*path), _field_name(path),
                                       f"{value!r} contains a NUL character (\\0 or \\u0000); remove it"))
    return sorted(issues, key=lambda issue: issue.line)


def _field_name(path, last=None):
    """Return a profile field name such as ``points[0].name`` for a path of keys and list indexes."""
    steps = [*path, last] if last is not None else list(path)
    name = ""
    for step in steps:
        if isinstance(step, int):
            name += f"[{step}]"
        elif name:
            name += f".{step}"
        else:
            name = str(step)
    return name


def _type_error(name, value):
    if name in INTEGER_FIELDS and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{value!r} is not an integer"
    if name in NUMBER_FIELDS and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"{value!r} is not a number"
    if name in TEXT_FIELDS and not isinstance(value, str):
        return f"{value!r} is not text; quote it"
    if name == "enabled" and not isinstance(value, bool):
        return f"{value!r} is not true or false"
    return ""


def _check_models(sensor_values, point_values, protocol, prefix, line_of, issues):
    """Run the models' own validation on unsaved objects and report their errors under profile field names."""
    model_to_profile = {attribute: name for name, attribute in SENSOR_FIELDS.items()}
    sensor = Sensor(**{SENSOR_FIELDS[name]: value for name, value in sensor_values.items()})
    point = Point(device=Device(protocol=protocol), **point_values)
    for instance, exclude in ((sensor, ["unit"]), (point, ["device", "sensor"])):
        try:
            instance.full_clean(exclude=exclude, validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            for model_field, messages in exc.message_dict.items():
                name = model_to_profile.get(model_field, model_field) if instance is sensor else model_field
                issues.append(ProfileIssue(line_of(name), f"{prefix}{name}", " ".join(messages)))


class _LineIndex:
    """Lines of the nodes of a composed YAML document, looked up by a path of keys and list indexes."""

    def __init__(self, root):
        self.root = root

    def of(self, *path):
        """Return the 1-based line of the deepest node along ``path`` that exists."""
        node = self.root
        line = node.start_mark.line + 1
        for step in path:
            child = None
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if key_node.value == step:
                        line = key_node.start_mark.line + 1
                        child = value_node
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
                child = node.value[step]
                line = child.start_mark.line + 1
            if child is None:
                break
            node = child
        return line


@dataclass(frozen=True)
class PreviewRow:
    """One point of a profile as applying it to a device and unit would store it."""

    key: str
    name: str
    quantity: str
    unit: str
    address: str
    sensor_action: str
    point_action: str


def preview_profile(profile, *, device, unit):
    """Return a PreviewRow per point of ``profile``, saying whether its sensor and point would be created or updated.

    Raises ProfileError when the device's protocol differs from the profile's, as apply_profile does.
    """
    _check_protocol(profile, device)
    sensors = {sensor.key: sensor for sensor in Sensor.objects.filter(unit=unit)}
    sensors_with_point = set(Point.objects.filter(device=device, sensor__unit=unit).values_list("sensor__key", flat=True))
    rows = []
    for entry in profile.points:
        key = entry["sensor"]["key"]
        address = ", ".join(f"{name} {value}" for name, value in entry["point"].items()
                            if name in PROTOCOL_POINT_FIELDS[profile.protocol])
        rows.append(PreviewRow(
            key=key,
            name=entry["sensor"]["name"],
            quantity=entry["sensor"]["quantity"],
            unit=entry["sensor"].get("unit") or "",
            address=address,
            sensor_action="update" if key in sensors else "create",
            point_action="update" if key in sensors_with_point else "create",
        ))
    return rows


def _check_protocol(profile, device):
    if device.protocol != profile.protocol:
        raise ProfileError([ProfileIssue(1, "protocol", (
            f"profile {profile.name!r} is for {profile.protocol}, but device {device.pk} uses {device.protocol}; "
            "pick a device of that protocol"))])
