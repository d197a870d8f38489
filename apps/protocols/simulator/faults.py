"""Faults that the plant simulator injects into its values and its Modbus server, for tests and demos.

A point fault names a unit by device id and a point by key, e.g. ``1:supply_temp``:

- ``nan``: the point reads NaN (float points only, because integers have no NaN);
- ``stuck``: the point keeps the value it had when the fault was applied;
- ``drift``: the point reads its true value plus ``rate`` × simulated seconds since the fault
  was applied, written ``1:supply_temp:0.5``;
- ``exception``: the point's registers are not mapped, so a Modbus read of them gets exception
  code 2 (illegal data address).

Disconnects and restarts are handled by ``PlantServer.restart``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from apps.protocols.simulator.plant import Plant, SimulatedUnit

__all__ = ["FAULT_KINDS", "FaultInjector", "PointFault", "parse_point_fault"]

FAULT_KINDS = ("nan", "stuck", "drift", "exception")
FLOAT_TYPES = ("float32", "float64")


@dataclass(frozen=True)
class PointFault:
    """One fault on one point of the plant."""

    kind: str
    device_id: int
    key: str
    rate: float = 0.0


def parse_point_fault(kind: str, text: str) -> PointFault:
    """Parse ``UNIT:KEY`` (or ``UNIT:KEY:RATE`` for drift) into a PointFault; raise ValueError naming the fault."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"Unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}.")
    parts = text.split(":")
    expected = 3 if kind == "drift" else 2
    example = "1:supply_temp:0.5" if kind == "drift" else "1:supply_temp"
    if len(parts) != expected:
        raise ValueError(f"Invalid {kind} fault {text!r}; write it as {example!r}.")
    try:
        device_id = int(parts[0])
        rate = float(parts[2]) if kind == "drift" else 0.0
    except ValueError:
        raise ValueError(f"Invalid {kind} fault {text!r}; write it as {example!r}.") from None
    return PointFault(kind, device_id, parts[1], rate)


class FaultInjector:
    """Apply point faults to the values of a Plant; the servers read values through it."""

    def __init__(self, plant: Plant, faults: tuple[PointFault, ...] | list[PointFault] = ()) -> None:
        self.plant = plant
        self.faults: dict[tuple[int, str], PointFault] = {}
        units = {unit.device_id: unit for unit in plant.units}
        for fault in faults:
            unit = units.get(fault.device_id)
            if unit is None:
                raise ValueError(
                    f"Fault on unit {fault.device_id} is invalid: the plant has device ids {sorted(units)}."
                )
            point = unit.point(fault.key)
            if fault.kind == "nan" and point.data_type not in FLOAT_TYPES:
                raise ValueError(
                    f"A NaN fault needs a float point, but {unit.name} {fault.key} is {point.data_type}; "
                    "pick a float32 or float64 point."
                )
            self.faults[fault.device_id, fault.key] = fault
        # Stuck values and drift start from the plant as it is when the faults are applied.
        self._start_time = plant.time
        self._stuck = {
            (fault.device_id, fault.key): plant.values(units[fault.device_id])[fault.key]
            for fault in self.faults.values() if fault.kind == "stuck"
        }

    @property
    def units(self) -> tuple[SimulatedUnit, ...]:
        return self.plant.units

    def step(self, dt_seconds: float) -> None:
        self.plant.step(dt_seconds)

    def exception_keys(self, unit: SimulatedUnit) -> set[str]:
        """Return the keys of the points of ``unit`` whose reads get an exception response."""
        return {key for (device_id, key), fault in self.faults.items()
                if device_id == unit.device_id and fault.kind == "exception"}

    def values(self, unit: SimulatedUnit) -> dict[str, float | bool]:
        """Return the plant's values of ``unit`` with the faults applied."""
        values = self.plant.values(unit)
        for (device_id, key), fault in self.faults.items():
            if device_id != unit.device_id:
                continue
            if fault.kind == "nan":
                values[key] = math.nan
            elif fault.kind == "stuck":
                values[key] = self._stuck[device_id, key]
            elif fault.kind == "drift":
                point = unit.point(key)
                drifted = values[key] + fault.rate * (self.plant.time - self._start_time)
                # A transmitter saturates at its range, so the drifted value is clamped too.
                values[key] = min(max(drifted, point.minimum), point.maximum)
        return values
