"""Model of a small thermal plant (a boiler, a chiller and a heat pump) for demos and tests.

The model is deliberately simple. Temperatures follow first-order lags towards their
targets, the thermal power is computed from flow and temperature difference, a slow
sine wave models the daily load profile and each unit switches on and off at random.
Measurements carry gaussian noise and are clamped to each point's range, as a
transmitter would saturate. A plant created with the same seed produces the same values.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from apps.protocols.modbus.codec import INTEGER_RANGES, register_count

__all__ = [
    "PLANT",
    "WATER_KW_PER_M3H_K",
    "Plant",
    "SimulatedPoint",
    "SimulatedUnit",
]

# Thermal power of water in kW per m³/h of flow and per kelvin of temperature difference:
# 1000 kg/m³ * 4.186 kJ/(kg*K) / 3600 s/h.
WATER_KW_PER_M3H_K = 1.163


@dataclass(frozen=True)
class SimulatedPoint:
    """Data point of a simulated unit and its Modbus encoding.

    The engineering value is ``raw * scale + offset``. ``minimum`` and ``maximum`` are
    the physical range in engineering units, and ``decimals`` is the display precision.
    """

    key: str
    name: str
    quantity: str
    unit: str
    register_type: str
    address: int
    data_type: str
    byte_order: str = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    minimum: float = 0.0
    maximum: float = 1.0
    decimals: int = 0

    @property
    def register_count(self) -> int:
        """Number of registers (or coils) that the point occupies."""
        return register_count(self.data_type)

    def raw_value(self, value: float | bool) -> int | float | bool:
        """Convert an engineering value to the raw value stored in the device.

        Integer types are rounded to the nearest integer.
        """
        if self.data_type == "bool":
            return bool(value)
        raw = (float(value) - self.offset) / self.scale
        if self.data_type in INTEGER_RANGES:
            return round(raw)
        return raw

    def engineering_value(self, raw: int | float | bool) -> float | bool:
        """Convert a raw device value to the engineering value.

        The result is not rounded, because ``decimals`` is only the display precision.
        """
        if self.data_type == "bool":
            return bool(raw)
        return raw * self.scale + self.offset


@dataclass(frozen=True)
class SimulatedUnit:
    """Thermal unit that responds on its own Modbus device id."""

    device_id: int
    kind: str
    name: str
    points: tuple[SimulatedPoint, ...]

    def point(self, key: str) -> SimulatedPoint:
        """Return the point with ``key``, or raise KeyError."""
        for point in self.points:
            if point.key == key:
                return point
        raise KeyError(f"Unit {self.name!r} has no point {key!r}.")


def _temperature(key: str, name: str, register_type: str, address: int, data_type: str,
                 byte_order: str = "ABCD", scale: float = 1.0, minimum: float = -20.0,
                 maximum: float = 120.0) -> SimulatedPoint:
    decimals = 1 if scale == 0.1 else 2
    return SimulatedPoint(key, name, "temperature", "°C", register_type, address, data_type,
                          byte_order, scale, 0.0, minimum, maximum, decimals)


_BOILER = SimulatedUnit(
    device_id=1,
    kind="boiler",
    name="Boiler 1",
    points=(
        _temperature("supply_temp", "Supply temperature", "holding", 0, "float32", "ABCD"),
        _temperature("return_temp", "Return temperature", "holding", 2, "float32", "CDAB"),
        SimulatedPoint("fuel_power", "Fuel power", "power", "kW", "holding", 4, "float32", "CDAB",
                       minimum=0.0, maximum=1200.0, decimals=1),
        SimulatedPoint("modulation", "Burner modulation", "ratio", "%", "holding", 6, "uint16",
                       scale=0.1, minimum=0.0, maximum=100.0, decimals=1),
        SimulatedPoint("run_status", "Run status", "state", "", "holding", 7, "uint16",
                       minimum=0.0, maximum=1.0),
        SimulatedPoint("flow", "Flow", "flow", "m³/h", "input", 0, "uint16",
                       scale=0.1, minimum=0.0, maximum=100.0, decimals=1),
        SimulatedPoint("pressure", "Pressure", "pressure", "bar", "input", 1, "int16",
                       scale=0.01, minimum=0.0, maximum=10.0, decimals=2),
        SimulatedPoint("thermal_power", "Thermal power", "power", "kW", "input", 2, "uint32",
                       scale=0.001, minimum=0.0, maximum=1200.0, decimals=3),
        SimulatedPoint("thermal_energy", "Thermal energy", "energy", "kWh", "input", 4, "uint64",
                       scale=0.01, minimum=0.0, maximum=1e12, decimals=2),
        SimulatedPoint("pump_command", "Pump command", "state", "", "coil", 0, "bool",
                       minimum=0.0, maximum=1.0),
        SimulatedPoint("flow_switch", "Flow switch", "state", "", "discrete", 0, "bool",
                       minimum=0.0, maximum=1.0),
    ),
)

_CHILLER = SimulatedUnit(
    device_id=2,
    kind="chiller",
    name="Chiller 1",
    points=(
        _temperature("supply_temp", "Supply temperature", "holding", 0, "float32", "CDAB",
                     minimum=-10.0, maximum=40.0),
        _temperature("return_temp", "Return temperature", "holding", 2, "float32", "CDAB",
                     minimum=-10.0, maximum=40.0),
        SimulatedPoint("electrical_power", "Electrical power", "power", "kW", "holding", 4, "float32",
                       "ABCD", minimum=0.0, maximum=300.0, decimals=1),
        SimulatedPoint("cop", "Coefficient of performance", "ratio", "", "holding", 6, "uint16",
                       scale=0.01, minimum=0.0, maximum=10.0, decimals=2),
        SimulatedPoint("run_status", "Run status", "state", "", "holding", 7, "uint16",
                       minimum=0.0, maximum=1.0),
        SimulatedPoint("flow", "Flow", "flow", "m³/h", "input", 0, "uint16",
                       scale=0.1, minimum=0.0, maximum=150.0, decimals=1),
        SimulatedPoint("pressure", "Pressure", "pressure", "bar", "input", 1, "int16",
                       scale=0.01, minimum=0.0, maximum=10.0, decimals=2),
        SimulatedPoint("thermal_power", "Cooling power", "power", "kW", "input", 2, "uint32", "CDAB",
                       scale=0.001, minimum=0.0, maximum=1000.0, decimals=3),
        SimulatedPoint("pump_command", "Pump command", "state", "", "coil", 0, "bool",
                       minimum=0.0, maximum=1.0),
        SimulatedPoint("flow_switch", "Flow switch", "state", "", "discrete", 0, "bool",
                       minimum=0.0, maximum=1.0),
    ),
)

_HEAT_PUMP = SimulatedUnit(
    device_id=3,
    kind="heat_pump",
    name="Heat pump 1",
    points=(
        _temperature("supply_temp", "Supply temperature", "holding", 0, "int16", scale=0.01),
        _temperature("return_temp", "Return temperature", "holding", 1, "int16", scale=0.01),
        SimulatedPoint("flow", "Flow", "flow", "m³/h", "holding", 2, "float32", "ABCD",
                       minimum=0.0, maximum=50.0, decimals=2),
        SimulatedPoint("electrical_power", "Electrical power", "power", "kW", "holding", 4, "float32",
                       "CDAB", minimum=0.0, maximum=200.0, decimals=1),
        SimulatedPoint("cop", "Coefficient of performance", "ratio", "", "holding", 6, "float32",
                       "ABCD", minimum=0.0, maximum=10.0, decimals=2),
        SimulatedPoint("run_status", "Run status", "state", "", "holding", 8, "uint16",
                       minimum=0.0, maximum=1.0),
        SimulatedPoint("pressure", "Pressure", "pressure", "bar", "input", 0, "uint16",
                       scale=0.01, minimum=0.0, maximum=10.0, decimals=2),
        SimulatedPoint("thermal_power", "Thermal power", "power", "kW", "input", 1, "uint32",
                       scale=0.001, minimum=0.0, maximum=600.0, decimals=3),
        _temperature("outdoor_temp", "Outdoor temperature", "input", 3, "int16", scale=0.1,
                     minimum=-40.0, maximum=50.0),
        SimulatedPoint("thermal_energy", "Thermal energy", "energy", "kWh", "input", 4, "uint64",
                       scale=0.01, minimum=0.0, maximum=1e12, decimals=2),
        SimulatedPoint("pump_command", "Pump command", "state", "", "coil", 0, "bool",
                       minimum=0.0, maximum=1.0),
        SimulatedPoint("flow_switch", "Flow switch", "state", "", "discrete", 0, "bool",
                       minimum=0.0, maximum=1.0),
    ),
)

PLANT: tuple[SimulatedUnit, ...] = (_BOILER, _CHILLER, _HEAT_PUMP)


@dataclass(frozen=True)
class _Design:
    """Design data of one unit kind."""

    supply_setpoint: float  # °C
    design_delta_t: float  # K at full load, positive for heating
    rated_flow: float  # m³/h at full load
    static_pressure: float  # bar with the pump stopped
    pump_head: float  # bar added at rated flow
    idle_temp: float  # °C that the water drifts to while the unit is off
    mean_on_time: float  # s
    mean_off_time: float  # s
    load_phase: float  # rad, shifts the load wave so the units do not move in step


_DESIGNS: dict[str, _Design] = {
    "boiler": _Design(75.0, 20.0, 40.0, 1.5, 0.8, 30.0, 1800.0, 240.0, 0.0),
    "chiller": _Design(7.0, -5.0, 120.0, 2.0, 1.2, 18.0, 1500.0, 300.0, math.pi),
    "heat_pump": _Design(45.0, 7.0, 40.0, 1.8, 0.6, 25.0, 1200.0, 300.0, math.pi / 2),
}

_SUPPLY_TIME_CONSTANT = 40.0  # s, supply temperature towards its setpoint while running
_RETURN_TIME_CONSTANT = 60.0  # s, return temperature towards supply minus the load delta
_IDLE_TIME_CONSTANT = 300.0  # s, water temperatures towards the idle temperature while off
_FLOW_TIME_CONSTANT = 8.0  # s, pump ramp
_BOILER_EFFICIENCY = 0.93  # at low modulation, falling by 3 points at full load
_CARNOT_FRACTION = 0.45  # share of the Carnot COP that the heat pump and chiller reach

# Standard deviations of the measurement noise.
_TEMPERATURE_NOISE = 0.1  # K
_FLOW_NOISE = 0.2  # m³/h
_PRESSURE_NOISE = 0.01  # bar


@dataclass
class _UnitState:
    running: bool = True
    supply_temp: float = 0.0
    return_temp: float = 0.0
    flow: float = 0.0
    energy_kwh: float = 0.0
    measured: dict[str, float | bool] = field(default_factory=dict)


class Plant:
    """Simulated plant that advances the units of ``PLANT`` in time.

    ``day_length`` is the period of the load wave in seconds. The default of 1440 s
    compresses a day into 24 minutes, so a demo shows the load change.
    """

    def __init__(self, seed: int | None = None, *, units: tuple[SimulatedUnit, ...] = PLANT,
                 day_length: float = 1440.0) -> None:
        if day_length <= 0:
            raise ValueError(f"Invalid day_length {day_length!r}. Pass a period in seconds greater than 0.")
        self.units = units
        self.day_length = day_length
        self.time = 0.0
        self._random = random.Random(seed)
        self._states: dict[int, _UnitState] = {}
        for unit in units:
            design = _DESIGNS[unit.kind]
            supply = design.supply_setpoint
            load = self._load(unit)
            self._states[unit.device_id] = _UnitState(
                supply_temp=supply,
                return_temp=supply - load * design.design_delta_t,
                flow=design.rated_flow * self._flow_fraction(load),
            )
            self._measure(unit)

    def step(self, dt_seconds: float) -> None:
        """Advance every unit by ``dt_seconds`` and take new noisy measurements."""
        if dt_seconds <= 0:
            raise ValueError(f"Invalid time step {dt_seconds!r}. Pass a duration in seconds greater than 0.")
        self.time += dt_seconds
        for unit in self.units:
            self._advance(unit, dt_seconds)
            self._measure(unit)

    def values(self, unit: SimulatedUnit) -> dict[str, float | bool]:
        """Return the latest measurement of each point of ``unit`` in engineering units."""
        return dict(self._states[unit.device_id].measured)

    def _load(self, unit: SimulatedUnit) -> float:
        """Return the load fraction (0.15 to 0.95) from the daily wave."""
        phase = 2 * math.pi * self.time / self.day_length + _DESIGNS[unit.kind].load_phase
        return 0.55 + 0.4 * math.sin(phase)

    @staticmethod
    def _flow_fraction(load: float) -> float:
        # Variable-speed pumps track the load but keep a minimum flow.
        return 0.4 + 0.6 * load

    def _advance(self, unit: SimulatedUnit, dt: float) -> None:
        design = _DESIGNS[unit.kind]
        state = self._states[unit.device_id]

        # Exponentially distributed run and stop times, drawn as one switch chance per step.
        mean_time = design.mean_on_time if state.running else design.mean_off_time
        if self._random.random() < 1.0 - math.exp(-dt / mean_time):
            state.running = not state.running

        load = self._load(unit)
        if state.running:
            flow_target = design.rated_flow * self._flow_fraction(load)
            supply_target = design.supply_setpoint
            # At constant power the temperature difference shrinks as the flow grows.
            delta_target = design.design_delta_t * load / self._flow_fraction(load)
            return_target = state.supply_temp - delta_target
            supply_tau = _SUPPLY_TIME_CONSTANT
            return_tau = _RETURN_TIME_CONSTANT
        else:
            flow_target = 0.0
            supply_target = design.idle_temp
            return_target = design.idle_temp
            supply_tau = _IDLE_TIME_CONSTANT
            return_tau = _IDLE_TIME_CONSTANT

        state.flow = _lag(state.flow, flow_target, _FLOW_TIME_CONSTANT, dt)
        state.supply_temp = _lag(state.supply_temp, supply_target, supply_tau, dt)
        state.return_temp = _lag(state.return_temp, return_target, return_tau, dt)
        state.energy_kwh += self._thermal_power(unit, state) * dt / 3600.0

    def _thermal_power(self, unit: SimulatedUnit, state: _UnitState) -> float:
        """Return the heat delivered (boiler, heat pump) or removed (chiller) in kW."""
        delta_t = state.supply_temp - state.return_temp
        if unit.kind == "chiller":
            delta_t = -delta_t
        return max(0.0, state.flow * WATER_KW_PER_M3H_K * delta_t)

    def _measure(self, unit: SimulatedUnit) -> None:
        """Store noisy measurements of every point, clamped to the point's range."""
        design = _DESIGNS[unit.kind]
        state = self._states[unit.device_id]
        gauss = self._random.gauss

        # The heat meter computes the power from the noisy readings, as a real one does from its sensors.
        supply = state.supply_temp + gauss(0.0, _TEMPERATURE_NOISE)
        return_temp = state.return_temp + gauss(0.0, _TEMPERATURE_NOISE)
        flow = 0.0
        if state.flow > 0.05:
            flow = max(0.0, state.flow + gauss(0.0, _FLOW_NOISE))
        flow_ratio = state.flow / design.rated_flow
        pressure = design.static_pressure + design.pump_head * flow_ratio**2
        pressure += gauss(0.0, _PRESSURE_NOISE)

        delta_t = supply - return_temp
        if unit.kind == "chiller":
            delta_t = -delta_t
        thermal_power = max(0.0, flow * WATER_KW_PER_M3H_K * delta_t)

        values: dict[str, float | bool] = {
            "supply_temp": supply,
            "return_temp": return_temp,
            "flow": flow,
            "pressure": pressure,
            "thermal_power": thermal_power,
            "thermal_energy": state.energy_kwh,
            "run_status": 1.0 if state.running else 0.0,
            "pump_command": state.running,
            "flow_switch": state.flow > 0.1 * design.rated_flow,
            "outdoor_temp": self._outdoor_temp(),
        }
        if unit.kind == "boiler":
            values.update(self._boiler_input(unit, state.running, thermal_power))
        else:
            values.update(self._compressor_input(unit, state.running, thermal_power, supply,
                                                 values["outdoor_temp"]))

        measured: dict[str, float | bool] = {}
        for point in unit.points:
            value = values[point.key]
            if not isinstance(value, bool):
                value = min(max(value, point.minimum), point.maximum)
            measured[point.key] = value
        state.measured = measured

    def _outdoor_temp(self) -> float:
        """Return the outdoor temperature in °C, coldest at the start of the simulated day."""
        phase = 2 * math.pi * self.time / self.day_length - math.pi / 2
        return 8.0 + 7.0 * math.sin(phase) + self._random.gauss(0.0, _TEMPERATURE_NOISE)

    @staticmethod
    def _boiler_input(unit: SimulatedUnit, running: bool, thermal_power: float) -> dict[str, float]:
        """Return the burner modulation in % and the fuel power in kW."""
        if not running:
            return {"modulation": 0.0, "fuel_power": 0.0}
        modulation = 100.0 * thermal_power / unit.point("thermal_power").maximum
        efficiency = _BOILER_EFFICIENCY - 0.03 * modulation / 100.0
        return {"modulation": modulation, "fuel_power": thermal_power / efficiency}

    @staticmethod
    def _compressor_input(unit: SimulatedUnit, running: bool, thermal_power: float,
                          supply: float, outdoor: float) -> dict[str, float]:
        """Return the electrical power in kW and the COP of a chiller or heat pump.

        The COP is a fixed share of the Carnot COP between the refrigerant temperatures.
        They sit 5 K beyond the water or air temperature, except for the chiller's
        air-cooled condenser, which runs 20 K above the outdoor air.
        """
        if not running:
            return {"electrical_power": 0.0, "cop": 0.0}
        if unit.kind == "chiller":
            evaporating = supply - 5.0
            condensing = outdoor + 20.0
            useful = evaporating + 273.15
        else:
            evaporating = outdoor - 5.0
            condensing = supply + 5.0
            useful = condensing + 273.15
        lift = max(condensing - evaporating, 5.0)
        cop = min(max(_CARNOT_FRACTION * useful / lift, 1.5), 7.5)
        return {"electrical_power": thermal_power / cop, "cop": cop}


def _lag(value: float, target: float, time_constant: float, dt: float) -> float:
    """Advance a first-order lag exactly over ``dt``, so large steps stay stable."""
    return target + (value - target) * math.exp(-dt / time_constant)
