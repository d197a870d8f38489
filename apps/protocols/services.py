"""Write paths of the protocols app: setpoint writes to field devices.

A setpoint write changes the device, so its audit entry is recorded right
after the device confirmed (or failed) the write. The confirmed value is then
stored as a reading of the point's sensor.
"""

import logging
import math
from dataclasses import dataclass

from django.db import connection

from apps.accounts.roles import Capability, check_capability
from apps.audit import services as audit
from apps.audit.choices import AuditAction, Outcome
from apps.sensors.quality import is_bad, quality_label

from .choices import DataType, Dnp3PointType, Protocol, RegisterType
from .drivers.base import DeviceUnreachable, UnconfirmedWrite, WriteRejected
from .gateway_commands import SetpointWriter
from .sinks import deliver_samples

logger = logging.getLogger(__name__)

DNP3_OUTPUT_TYPES = (Dnp3PointType.BINARY_OUTPUT_STATUS, Dnp3PointType.ANALOG_OUTPUT_STATUS)


class SetpointError(Exception):
    """A setpoint was not written, or the device did not confirm it; the message states why."""


class InvalidSetpoint(SetpointError):
    """The setpoint was rejected before any request went to the device."""


@dataclass(frozen=True)
class SetpointResult:
    """Outcome of a confirmed setpoint write, in engineering units."""

    point_id: int
    requested: float
    written: float
    read_back: float


def write_setpoint(point, value, *, actor):
    """Write ``value`` (engineering units) to ``point`` and confirm it by reading the point back.

    The value must lie in the sensor's physical range and fit the point's data type; bit and
    coil points take 0 or 1. Raises PermissionDenied when the role of ``actor`` does not allow
    setpoint writes and SetpointError when the write is invalid, fails, or reads back another value.
    """
    check_capability(actor, Capability.WRITE_SETPOINT)
    device = point.device
    value = _checked_value(point, value)

    # A DNP3 write goes through the gateway's master when a gateway holds the device (apps.protocols.gateway_commands).
    driver = SetpointWriter(device)
    try:
        previous, written, read_back = driver.write_and_read_back(point, value)
    except (DeviceUnreachable, WriteRejected) as exc:
        state = "is unconfirmed" if isinstance(exc, UnconfirmedWrite) else "was not written"
        error = SetpointError(f"Setpoint {value} for point {point.pk} {state}: {exc}")
        _record_failure(point, value, actor, error, response=driver.write_response)
        raise error from exc
    except ValueError as exc:
        raise InvalidSetpoint(f"Setpoint {value} cannot be encoded for point {point.pk}: {exc}") from exc

    response = driver.write_response
    if read_back.value is None or is_bad(read_back.quality):
        reason = driver.point_errors.get(point.pk) or quality_label(read_back.quality)
        error = SetpointError(
            f"Setpoint {value} was sent to point {point.pk}, but reading it back failed ({reason}); "
            "check the device before writing again."
        )
        _record_failure(point, value, actor, error, previous=previous, written=written, response=response)
        raise error
    expected = driver.expected_read_back(point, written)
    if expected is not None and not math.isclose(read_back.value, expected, rel_tol=1e-9, abs_tol=1e-12):
        error = SetpointError(
            f"Setpoint {value} was sent to point {point.pk} as {written}, but the device reads back "
            f"{read_back.value}; the device may clamp or reject the value, or another master writes it."
        )
        _record_failure(point, value, actor, error, previous=previous, written=written, response=response)
        raise error

    facts = {"previous": previous, "written": written, "read_back": read_back.value}
    if response is not None:
        facts["device_response"] = response
    audit.record(
        AuditAction.SETPOINT_WRITTEN,
        actor=actor,
        obj=point,
        detail=_audit_detail(point, value, **facts),
    )
    logger.info(
        "User %s wrote setpoint %s to point %s (device %s, sensor %s); device confirmed %s",
        actor.pk, value, point.pk, device.pk, point.sensor_id, read_back.value,
    )
    _store_read_back(point, read_back)
    return SetpointResult(point_id=point.pk, requested=value, written=written, read_back=read_back.value)


def _store_read_back(point, sample):
    """Store the confirmed value as a reading, so live values and deviation alarms see the new setpoint before the next poll."""
    try:
        deliver_samples(connection.schema_name, [sample])
    except Exception:
        # The device confirmed the write and the audit entry is recorded; the next poll stores the value.
        logger.exception("Storing the read-back value of point %s (sensor %s) failed", point.pk, point.sensor_id)


def _record_failure(point, value, actor, error, previous=None, written=None, response=None):
    logger.warning(
        "Setpoint %s for point %s (device %s) by user %s failed: %s", value, point.pk, point.device_id, actor.pk, error
    )
    facts = {"previous": previous, "written": written, "error": str(error)}
    if response is not None:
        facts["device_response"] = response
    audit.record(
        AuditAction.SETPOINT_WRITTEN,
        actor=actor,
        obj=point,
        outcome=Outcome.FAILURE,
        detail=_audit_detail(point, value, **facts),
    )


def _audit_detail(point, value, **facts):
    return {"device": point.device_id, "sensor": point.sensor_id, "requested": value, **facts}


def _checked_value(point, value):
    """Return ``value`` as a float after the checks that need no device, or raise SetpointError."""
    if not point.enabled or not point.device.enabled:
        raise InvalidSetpoint(f"Point {point.pk} or its device {point.device_id} is disabled; enable both to write.")
    is_modbus = point.device.protocol == Protocol.MODBUS_TCP
    if is_modbus and point.register_type in (RegisterType.INPUT, RegisterType.DISCRETE):
        raise InvalidSetpoint(
            f"Point {point.pk} is a read-only {point.register_type} {point.address}; "
            "setpoints go to holding registers and coils."
        )
    is_dnp3 = point.device.protocol == Protocol.DNP3
    if is_dnp3 and point.dnp3_type not in DNP3_OUTPUT_TYPES:
        raise InvalidSetpoint(
            f"Point {point.pk} is DNP3 {point.dnp3_type} {point.dnp3_index}, an input; setpoints go to "
            "binary_output_status and analog_output_status points."
        )
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidSetpoint(f"Setpoint {value!r} for point {point.pk} is not a finite number.")
    value = float(value)

    if is_modbus and point.data_type in (DataType.BIT, DataType.BOOL) and value not in (0.0, 1.0):
        raise InvalidSetpoint(f"Setpoint {value} for point {point.pk} is invalid: a {point.data_type} point takes 0 or 1.")
    if is_dnp3 and point.dnp3_type == Dnp3PointType.BINARY_OUTPUT_STATUS and value not in (0.0, 1.0):
        raise InvalidSetpoint(f"Setpoint {value} for point {point.pk} is invalid: a DNP3 binary output takes 0 or 1.")
    sensor = point.sensor
    if not sensor.in_range(value):
        raise InvalidSetpoint(
            f"Setpoint {value} for point {point.pk} is outside the range of sensor {sensor.key!r} "
            f"({sensor.minimum} to {sensor.maximum} {sensor.engineering_unit}); pick a value inside it."
        )
    return value
