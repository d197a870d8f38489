"""Tests of the plant model and its Modbus TCP server. They need neither Django nor a database.

The server tests listen on 127.0.0.1 only.
"""

import asyncio
import logging
import socket

import pytest
from pymodbus.client import AsyncModbusTcpClient

from apps.protocols.modbus.codec import INTEGER_RANGES, decode_registers, encode_value
from apps.protocols.simulator.plant import PLANT, WATER_KW_PER_M3H_K, Plant
from apps.protocols.simulator.server import PlantServer, serve_plant

HOST = "127.0.0.1"
UPDATE_INTERVAL = 0.05  # s, short so that the tests see several updates quickly
REQUIRED_KEYS = {"supply_temp", "return_temp", "flow", "pressure", "thermal_power", "run_status"}


async def read_point(client, unit, point):
    """Read one point over Modbus and return its engineering value."""
    count = point.register_count
    if point.register_type == "holding":
        response = await client.read_holding_registers(point.address, count=count, device_id=unit.device_id)
    elif point.register_type == "input":
        response = await client.read_input_registers(point.address, count=count, device_id=unit.device_id)
    elif point.register_type == "coil":
        response = await client.read_coils(point.address, count=1, device_id=unit.device_id)
    else:
        response = await client.read_discrete_inputs(point.address, count=1, device_id=unit.device_id)
    assert not response.isError(), f"{unit.name} {point.key}: {response}"

    if point.register_type in ("coil", "discrete"):
        raw = decode_registers(response.bits[:1], "bool")
    else:
        raw = decode_registers(response.registers, point.data_type, point.byte_order)
    return point.engineering_value(raw)


async def read_plant(client):
    """Return {(device_id, key): engineering value} for every point of PLANT."""
    values = {}
    for unit in PLANT:
        for point in unit.points:
            values[unit.device_id, point.key] = await read_point(client, unit, point)
    return values


async def wait_for_updates(server, count):
    target = server.update_count + count
    async with asyncio.timeout(5.0):
        while server.update_count < target:
            await asyncio.sleep(UPDATE_INTERVAL / 2)


def free_port():
    """Return a loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- register map


def test_plant_units_and_device_ids():
    assert [(unit.name, unit.kind, unit.device_id) for unit in PLANT] == [
        ("Boiler 1", "boiler", 1),
        ("Chiller 1", "chiller", 2),
        ("Heat pump 1", "heat_pump", 3),
    ]


@pytest.mark.parametrize("unit", PLANT, ids=lambda unit: unit.name)
def test_unit_has_required_points(unit):
    keys = {point.key for point in unit.points}

    assert REQUIRED_KEYS <= keys
    assert "cop" in keys or "fuel_power" in keys
    if unit.kind == "boiler":
        assert "modulation" in keys


@pytest.mark.parametrize("unit", PLANT, ids=lambda unit: unit.name)
def test_unit_point_keys_unique(unit):
    keys = [point.key for point in unit.points]

    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("unit", PLANT, ids=lambda unit: unit.name)
def test_unit_addresses_do_not_overlap(unit):
    used = set()
    for point in unit.points:
        addresses = {(point.register_type, point.address + i) for i in range(point.register_count)}
        assert not used & addresses, f"{point.key} overlaps {sorted(used & addresses)}"
        used |= addresses


@pytest.mark.parametrize(
    ("unit", "point"),
    [(unit, point) for unit in PLANT for point in unit.points],
    ids=lambda item: getattr(item, "key", None) or item.name,
)
def test_point_range_fits_data_type(unit, point):
    if point.register_type in ("coil", "discrete"):
        assert point.data_type == "bool"
        return
    assert point.data_type != "bool"
    assert point.minimum < point.maximum

    # encode_value raises ValueError when the raw value does not fit the integer type.
    encode_value(point.raw_value(point.minimum), point.data_type, point.byte_order)
    encode_value(point.raw_value(point.maximum), point.data_type, point.byte_order)


def test_plant_mixes_encodings():
    encodings = {
        (point.register_type, point.data_type, point.byte_order, point.scale)
        for unit in PLANT
        for point in unit.points
    }

    assert ("holding", "float32", "ABCD", 1.0) in encodings
    assert ("holding", "float32", "CDAB", 1.0) in encodings
    assert any(data_type == "int16" and scale == 0.01 for _, data_type, _, scale in encodings)
    assert any(data_type == "uint16" and scale == 0.1 for _, data_type, _, scale in encodings)
    assert any(data_type == "uint32" and scale == 0.001 for _, data_type, _, scale in encodings)
    assert any(register_type == "coil" for register_type, _, _, _ in encodings)


def test_integer_raw_values_are_rounded():
    point = PLANT[0].point("flow")

    assert point.raw_value(12.34) == 123
    assert point.data_type in INTEGER_RANGES


# ---------------------------------------------------------------- plant model


def test_plant_same_seed_same_values():
    first = Plant(seed=42)
    second = Plant(seed=42)
    for _ in range(200):
        first.step(1.0)
        second.step(1.0)

    for unit in PLANT:
        assert first.values(unit) == second.values(unit)


def test_plant_other_seed_other_values():
    first = Plant(seed=1)
    second = Plant(seed=2)
    first.step(1.0)
    second.step(1.0)

    assert first.values(PLANT[0]) != second.values(PLANT[0])


def test_plant_energy_balance():
    plant = Plant(seed=5)
    checked = 0
    for _ in range(3000):
        plant.step(1.0)
        for unit in PLANT:
            values = plant.values(unit)
            if values["thermal_power"] <= 0:
                continue
            delta_t = abs(values["supply_temp"] - values["return_temp"])
            expected = values["flow"] * WATER_KW_PER_M3H_K * delta_t
            assert values["thermal_power"] == pytest.approx(expected, rel=0.01, abs=0.5), unit.name
            checked += 1

    assert checked > 3000


def test_plant_values_within_range():
    plant = Plant(seed=9)
    for _ in range(3000):
        plant.step(2.0)
        for unit in PLANT:
            values = plant.values(unit)
            for point in unit.points:
                assert point.minimum <= values[point.key] <= point.maximum, f"{unit.name} {point.key}"


def test_plant_units_cycle_on_and_off():
    plant = Plant(seed=11)
    states = {unit.device_id: set() for unit in PLANT}
    for _ in range(20_000):
        plant.step(1.0)
        for unit in PLANT:
            states[unit.device_id].add(plant.values(unit)["run_status"])

    for unit in PLANT:
        assert states[unit.device_id] == {0.0, 1.0}, unit.name


def test_running_boiler_holds_setpoint():
    plant = Plant(seed=3)
    boiler = PLANT[0]
    running_for = 0
    checked = 0
    for _ in range(5000):
        plant.step(1.0)
        values = plant.values(boiler)
        running_for = running_for + 1 if values["run_status"] == 1.0 else 0
        # Five time constants after a start the supply has settled at its 75 °C setpoint.
        if running_for > 200:
            assert values["supply_temp"] == pytest.approx(75.0, abs=0.6)
            checked += 1

    assert checked > 1000


def test_plant_energy_counter_increases():
    plant = Plant(seed=4)
    boiler = PLANT[0]
    readings = []
    for _ in range(600):
        plant.step(1.0)
        readings.append(plant.values(boiler)["thermal_energy"])

    assert all(later >= earlier for earlier, later in zip(readings, readings[1:]))
    assert readings[-1] > readings[0]


@pytest.mark.parametrize("dt", [0.0, -1.0])
def test_plant_step_rejects_non_positive_dt(dt):
    with pytest.raises(ValueError, match="time step"):
        Plant(seed=1).step(dt)


# ---------------------------------------------------------------- Modbus server


@pytest.mark.asyncio
@pytest.mark.slow
async def test_server_points_within_range():
    async with PlantServer(Plant(seed=7), host=HOST, port=0, update_interval=UPDATE_INTERVAL) as server:
        client = AsyncModbusTcpClient(HOST, port=server.port)
        await client.connect()
        try:
            await wait_for_updates(server, 1)
            values = await read_plant(client)
        finally:
            client.close()

    for unit in PLANT:
        for point in unit.points:
            value = values[unit.device_id, point.key]
            assert point.minimum <= value <= point.maximum, f"{unit.name} {point.key} = {value}"


@pytest.mark.asyncio
@pytest.mark.slow
async def test_server_values_change_between_updates():
    async with PlantServer(Plant(seed=8), host=HOST, port=0, update_interval=UPDATE_INTERVAL) as server:
        client = AsyncModbusTcpClient(HOST, port=server.port)
        await client.connect()
        try:
            before = await read_plant(client)
            await wait_for_updates(server, 2)
            after = await read_plant(client)
        finally:
            client.close()

    for unit in PLANT:
        changed = [
            point.key
            for point in unit.points
            if before[unit.device_id, point.key] != after[unit.device_id, point.key]
        ]
        assert changed, f"no value of {unit.name} changed"
    # Float32 temperatures carry continuous noise, so they differ after every update.
    assert before[1, "supply_temp"] != after[1, "supply_temp"]
    assert before[2, "supply_temp"] != after[2, "supply_temp"]


@pytest.mark.asyncio
@pytest.mark.slow
async def test_server_energy_balance_over_modbus():
    plant = Plant(seed=12)
    for _ in range(300):
        plant.step(1.0)
    # A long interval keeps an update from landing between the reads of one unit.
    async with PlantServer(plant, host=HOST, port=0, update_interval=60.0) as server:
        client = AsyncModbusTcpClient(HOST, port=server.port)
        await client.connect()
        try:
            values = await read_plant(client)
        finally:
            client.close()

    for unit in PLANT:
        assert values[unit.device_id, "run_status"] == 1.0, unit.name
        flow = values[unit.device_id, "flow"]
        delta_t = abs(values[unit.device_id, "supply_temp"] - values[unit.device_id, "return_temp"])
        power = values[unit.device_id, "thermal_power"]
        # The tolerance covers the register resolution of flow (0.1 m³/h) and temperature (0.01 K).
        assert power == pytest.approx(flow * WATER_KW_PER_M3H_K * delta_t, rel=0.01, abs=2.0), unit.name


@pytest.mark.asyncio
@pytest.mark.slow
async def test_server_coil_and_run_status_agree():
    plant = Plant(seed=13)
    # With this seed the boiler has stopped after 171 s while the other units run.
    for _ in range(180):
        plant.step(1.0)
    async with PlantServer(plant, host=HOST, port=0, update_interval=60.0) as server:
        client = AsyncModbusTcpClient(HOST, port=server.port)
        await client.connect()
        try:
            values = await read_plant(client)
        finally:
            client.close()

    run_states = {values[unit.device_id, "run_status"] for unit in PLANT}
    assert run_states == {0.0, 1.0}
    for unit in PLANT:
        assert values[unit.device_id, "pump_command"] is (values[unit.device_id, "run_status"] == 1.0), unit.name


@pytest.mark.asyncio
@pytest.mark.slow
async def test_server_port_in_use_raises_oserror():
    async with PlantServer(Plant(seed=1), host=HOST, port=0) as first:
        second = PlantServer(Plant(seed=1), host=HOST, port=first.port)
        with pytest.raises(OSError, match=f"Failed to listen on {HOST}:{first.port}"):
            await second.start()


@pytest.mark.parametrize(("port", "update_interval"), [(-1, 1.0), (65536, 1.0), (5020, 0.0)])
def test_server_rejects_invalid_settings(port, update_interval):
    with pytest.raises(ValueError, match="Invalid"):
        PlantServer(Plant(seed=1), port=port, update_interval=update_interval)


def test_server_port_before_start():
    with pytest.raises(RuntimeError, match="start"):
        PlantServer(Plant(seed=1)).port


@pytest.mark.asyncio
@pytest.mark.slow
async def test_serve_plant_until_cancelled(caplog):
    port = free_port()
    ready = asyncio.Event()
    caplog.set_level(logging.INFO, logger="apps.protocols.simulator.server")

    task = asyncio.create_task(serve_plant(HOST, port, update_interval=UPDATE_INTERVAL, seed=1, ready=ready))
    async with asyncio.timeout(5.0):
        await ready.wait()

    client = AsyncModbusTcpClient(HOST, port=port)
    await client.connect()
    try:
        response = await client.read_holding_registers(7, count=1, device_id=1)
    finally:
        client.close()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not response.isError()
    assert f"started on {HOST}:{port}" in caplog.text
    assert f"on {HOST}:{port} stopped" in caplog.text
    with pytest.raises(OSError):
        socket.create_connection((HOST, port), timeout=1.0).close()


def test_water_constant():
    # 1000 kg/m³ * 4.186 kJ/(kg*K) / 3600 s/h
    assert WATER_KW_PER_M3H_K == pytest.approx(1000 * 4.186 / 3600, abs=5e-4)
