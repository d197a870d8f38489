"""Fault injection of the plant simulator: NaN, stuck and drifting sensors, exception responses, disconnects."""

import asyncio
import math

import pytest
from django.core.management import CommandError, call_command
from pymodbus.client import AsyncModbusTcpClient

from apps.protocols.simulator.faults import FaultInjector, PointFault, parse_point_fault
from apps.protocols.simulator.plant import PLANT, Plant
from apps.protocols.simulator.server import PlantServer
from tests.protocols.test_simulator import HOST, UPDATE_INTERVAL, read_point, wait_for_updates

BOILER, CHILLER = PLANT[0], PLANT[1]


async def serve(faults, seed=7):
    server = PlantServer(FaultInjector(Plant(seed=seed), faults), host=HOST, port=0, update_interval=UPDATE_INTERVAL)
    await server.start()
    return server


# Parsing and validation


def test_parse_point_faults():
    assert parse_point_fault("nan", "1:supply_temp") == PointFault("nan", 1, "supply_temp")
    assert parse_point_fault("drift", "2:supply_temp:0.5") == PointFault("drift", 2, "supply_temp", 0.5)


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("drift", "1:supply_temp", "write it as '1:supply_temp:0.5'"),
        ("stuck", "one:supply_temp", "write it as '1:supply_temp'"),
        ("melt", "1:supply_temp", "Unknown fault kind 'melt'"),
    ],
)
def test_parse_point_fault_rejects_invalid(kind, text, message):
    with pytest.raises(ValueError, match=message):
        parse_point_fault(kind, text)


def test_nan_fault_needs_float_point():
    with pytest.raises(ValueError, match="needs a float point, but Chiller 1 cop is uint16"):
        FaultInjector(Plant(seed=1), [PointFault("nan", 2, "cop")])


def test_fault_on_unknown_unit_is_rejected():
    with pytest.raises(ValueError, match=r"the plant has device ids \[1, 2, 3\]"):
        FaultInjector(Plant(seed=1), [PointFault("stuck", 9, "supply_temp")])


def test_command_rejects_invalid_fault():
    with pytest.raises(CommandError, match="Invalid drift fault '1:supply_temp'"):
        call_command("run_simulator", "--drift", "1:supply_temp")


# Faults over Modbus


@pytest.mark.asyncio
async def test_nan_fault_reads_nan():
    server = await serve([PointFault("nan", 1, "supply_temp")])
    client = AsyncModbusTcpClient(HOST, port=server.port)
    await client.connect()

    await wait_for_updates(server, 2)
    faulted = await read_point(client, BOILER, BOILER.point("supply_temp"))
    healthy = await read_point(client, BOILER, BOILER.point("return_temp"))
    client.close()
    await server.stop()

    assert math.isnan(faulted)
    assert math.isfinite(healthy)


@pytest.mark.asyncio
async def test_stuck_fault_keeps_first_value():
    server = await serve([PointFault("stuck", 2, "supply_temp")])
    client = AsyncModbusTcpClient(HOST, port=server.port)
    await client.connect()

    readings = []
    for _ in range(5):
        await wait_for_updates(server, 2)
        readings.append((
            await read_point(client, CHILLER, CHILLER.point("supply_temp")),
            await read_point(client, CHILLER, CHILLER.point("flow")),
        ))
    client.close()
    await server.stop()

    assert len({stuck for stuck, _flow in readings}) == 1
    assert len({flow for _stuck, flow in readings}) > 1


@pytest.mark.asyncio
async def test_drift_fault_adds_rate_per_second():
    rate, interval = 2.0, 0.5
    reference = Plant(seed=7)
    # A slow update rate leaves time to read the value and the plant time of the same update.
    server = PlantServer(FaultInjector(Plant(seed=7), [PointFault("drift", 1, "return_temp", rate)]),
                         host=HOST, port=0, update_interval=interval)
    await server.start()
    client = AsyncModbusTcpClient(HOST, port=server.port)
    await client.connect()

    await wait_for_updates(server, 2)
    elapsed = server.plant.plant.time
    drifted = await read_point(client, BOILER, BOILER.point("return_temp"))
    client.close()
    await server.stop()
    for _ in range(round(elapsed / interval)):
        reference.step(interval)

    assert elapsed == pytest.approx(2 * interval)
    # float32 keeps about 7 significant digits.
    assert drifted == pytest.approx(reference.values(BOILER)["return_temp"] + rate * elapsed, abs=1e-3)


@pytest.mark.asyncio
async def test_exception_fault_answers_illegal_address():
    server = await serve([PointFault("exception", 1, "supply_temp")])
    client = AsyncModbusTcpClient(HOST, port=server.port)
    await client.connect()
    point = BOILER.point("supply_temp")

    response = await client.read_holding_registers(point.address, count=point.register_count, device_id=1)
    other = await read_point(client, BOILER, BOILER.point("return_temp"))
    await wait_for_updates(server, 2)
    client.close()
    await server.stop()

    assert response.isError()
    assert response.exception_code == 2
    assert math.isfinite(other)


@pytest.mark.asyncio
async def test_restart_disconnects_then_serves_again():
    server = await serve([])
    port = server.port

    restart = asyncio.create_task(server.restart(down_for=0.5))
    await asyncio.sleep(0.2)
    with pytest.raises(OSError):
        await asyncio.open_connection(HOST, port)
    updates_while_down = server.update_count
    await restart
    client = AsyncModbusTcpClient(HOST, port=port)
    await client.connect()
    after = await read_point(client, BOILER, BOILER.point("flow"))
    client.close()
    await server.stop()

    assert math.isfinite(after)
    assert server.update_count > updates_while_down > 0
