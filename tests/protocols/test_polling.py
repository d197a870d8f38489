import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.protocols.choices import DeviceStatus
from apps.protocols.models import Device, Point
from apps.protocols.polling import (
    DEVICE_STATUS_COLUMNS,
    MAX_POLL_SECONDS,
    _cached_devices,
    _device_cache,
    _verify_cache,
    claim_due_devices,
    poll_budget,
    poll_due_devices,
)
from apps.protocols.simulator.demo import configure_demo_plant
from apps.protocols.simulator.plant import PLANT
from apps.sensors.models import Sensor
from apps.sensors.quality import Quality
from apps.telemetry.models import Reading
from tests.conftest import free_port
from tests.factories import DeviceFactory, PointFactory, SensorFactory

pytestmark = pytest.mark.slow


def test_poll_simulator_stores_every_point(alpha, plant_simulator):
    configure_demo_plant(port=plant_simulator)

    summary = poll_due_devices()

    point_count = sum(len(unit.points) for unit in PLANT)
    assert summary.polled == len(PLANT)
    assert summary.failed == 0
    assert Reading.objects.count() == point_count
    assert Reading.objects.filter(quality=Quality.GOOD).count() == point_count
    assert set(Device.objects.values_list("status", flat=True)) == {DeviceStatus.ONLINE}


def test_poll_values_lie_in_sensor_ranges(alpha, plant_simulator):
    configure_demo_plant(port=plant_simulator)

    poll_due_devices()

    for reading in Reading.objects.select_related("sensor"):
        sensor = reading.sensor
        assert sensor.minimum <= reading.value <= sensor.maximum, sensor.key


def test_poll_claims_device_once_per_interval(alpha, plant_simulator):
    configure_demo_plant(port=plant_simulator, poll_interval=60)

    first = poll_due_devices()
    second = poll_due_devices()

    assert first.polled == len(PLANT)
    assert second.polled == 0


def test_unreachable_device_goes_offline_with_backoff(alpha):
    device = DeviceFactory(port=free_port(), timeout=0.5, poll_interval=2)
    point = PointFactory(device=device)
    before = timezone.now()

    summary = poll_due_devices()

    device.refresh_from_db()
    assert summary.failed == 1
    assert device.status == DeviceStatus.OFFLINE
    assert str(device.port) in device.last_error
    assert device.consecutive_failures == 1
    assert device.error_count == 1
    assert device.next_poll_at >= before + timedelta(seconds=4)
    reading = Reading.objects.get(sensor=point.sensor)
    assert reading.quality == Quality.BAD_COMM_LOST
    assert reading.value is None


def test_backoff_grows_and_comm_lost_is_stored_once(alpha):
    device = DeviceFactory(port=free_port(), timeout=0.5, poll_interval=1)
    point = PointFactory(device=device)

    poll_due_devices()
    Device.objects.filter(pk=device.pk).update(next_poll_at=timezone.now())
    before_second = timezone.now()
    poll_due_devices()

    device.refresh_from_db()
    assert device.consecutive_failures == 2
    assert device.next_poll_at >= before_second + timedelta(seconds=4)
    assert Reading.objects.filter(sensor=point.sensor).count() == 1


def test_exception_response_marks_only_that_point_bad(alpha, plant_simulator):
    device = DeviceFactory(port=plant_simulator, unit_id=1)
    good = PointFactory(device=device, register_type="holding", address=0, data_type="float32",
                        sensor=SensorFactory(minimum=-50, maximum=150))
    missing = PointFactory(device=device, register_type="holding", address=5000, data_type="uint16",
                           sensor=SensorFactory(minimum=None, maximum=None))

    summary = poll_due_devices()

    device.refresh_from_db()
    assert summary.failed == 0
    assert device.status == DeviceStatus.ONLINE
    assert Reading.objects.get(sensor=good.sensor).quality == Quality.GOOD
    bad = Reading.objects.get(sensor=missing.sensor)
    assert bad.quality == Quality.BAD_DEVICE_EXCEPTION
    assert bad.value is None


def test_device_recovers_after_outage(alpha, plant_simulator):
    device = DeviceFactory(port=free_port(), timeout=0.5, unit_id=1)
    PointFactory(device=device, sensor=SensorFactory(minimum=-50, maximum=150))
    poll_due_devices()

    Device.objects.filter(pk=device.pk).update(port=plant_simulator, next_poll_at=timezone.now())
    poll_due_devices()

    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE
    assert device.consecutive_failures == 0
    assert device.last_error == ""


def test_disabled_device_is_not_polled(alpha, plant_simulator):
    DeviceFactory(port=plant_simulator, enabled=False)

    assert poll_due_devices().polled == 0


def test_demo_plant_setup_is_idempotent(alpha, plant_simulator):
    configure_demo_plant(port=plant_simulator)
    configure_demo_plant(port=plant_simulator)

    assert Device.objects.count() == len(PLANT)
    assert Sensor.objects.count() == sum(len(unit.points) for unit in PLANT)


def test_point_error_names_exception_and_clears(alpha, register_server):
    device = DeviceFactory(port=register_server.port, unit_id=1)
    good = PointFactory(device=device, address=0, data_type="uint16", sensor=SensorFactory(minimum=0, maximum=100))
    missing = PointFactory(device=device, address=5000, data_type="uint16", sensor=SensorFactory(minimum=None))

    poll_due_devices()
    missing.refresh_from_db()
    good.refresh_from_db()
    first_error = missing.last_error

    Point.objects.filter(pk=missing.pk).update(address=10)
    Device.objects.filter(pk=device.pk).update(next_poll_at=timezone.now())
    poll_due_devices()
    missing.refresh_from_db()

    assert first_error == "holding 5000: exception 2 (illegal data address)"
    assert good.last_error == ""
    assert missing.last_error == ""
    assert Reading.objects.filter(sensor=missing.sensor, quality=Quality.GOOD).count() == 1


@pytest.fixture
def silent_server():
    """A TCP port whose connections open but never get a response, like a hung gateway."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()[1]
    listener.close()


def test_silent_device_goes_offline_and_others_store(alpha, plant_simulator, silent_server):
    healthy = DeviceFactory(port=plant_simulator, unit_id=1, timeout=0.5)
    PointFactory(device=healthy, sensor=SensorFactory(minimum=-50, maximum=150))
    silent = DeviceFactory(port=silent_server, timeout=0.3)
    PointFactory(device=silent)

    summary = poll_due_devices()

    healthy.refresh_from_db()
    silent.refresh_from_db()
    assert summary.polled == 2
    assert summary.failed == 1
    assert healthy.status == DeviceStatus.ONLINE
    assert silent.status == DeviceStatus.OFFLINE
    assert str(silent_server) in silent.last_error


def test_claim_leases_device_during_poll(alpha):
    device = DeviceFactory(poll_interval=2, timeout=1)
    start = timezone.now()

    first = claim_due_devices(start)
    during_poll = claim_due_devices(start + timedelta(seconds=5))

    device.refresh_from_db()
    assert [claimed.id for claimed in first] == [device.id]
    assert during_poll == []
    assert device.next_poll_at == start + timedelta(seconds=2 + poll_budget(device))


def test_poll_budget_is_capped(alpha):
    assert poll_budget(DeviceFactory.build(timeout=1)) == 4
    assert poll_budget(DeviceFactory.build(timeout=60)) == MAX_POLL_SECONDS


def test_successful_poll_keeps_cadence(alpha, plant_simulator):
    device = DeviceFactory(port=plant_simulator, unit_id=1, poll_interval=5)
    PointFactory(device=device, sensor=SensorFactory(minimum=-50, maximum=150))
    start = timezone.now()

    poll_due_devices(start)

    device.refresh_from_db()
    assert device.next_poll_at == start + timedelta(seconds=5)


def test_subscription_devices_are_not_polled(alpha):
    for protocol in ("mqtt", "opcua", "dnp3"):
        DeviceFactory(protocol=protocol, port=free_port())

    summary = poll_due_devices()

    assert summary.polled == 0
    assert set(Device.objects.values_list("status", flat=True)) == {DeviceStatus.UNKNOWN}


def test_refused_connection_is_named(alpha):
    device = DeviceFactory(port=free_port(), timeout=2)
    PointFactory(device=device)

    poll_due_devices()

    device.refresh_from_db()
    assert "connection refused" in device.last_error


def test_fixing_connection_resets_backoff(alpha, plant_simulator):
    device = DeviceFactory(port=free_port(), timeout=0.5)
    PointFactory(device=device)
    poll_due_devices()
    device.refresh_from_db()
    assert device.next_poll_at > timezone.now()

    device.port = plant_simulator
    device.save()

    device.refresh_from_db()
    assert device.next_poll_at <= timezone.now()
    assert device.consecutive_failures == 0


def test_renaming_device_keeps_backoff(alpha):
    device = DeviceFactory(port=free_port(), timeout=0.5)
    PointFactory(device=device)
    poll_due_devices()
    device.refresh_from_db()
    backoff_until = device.next_poll_at

    device.name = "Renamed controller"
    device.save()

    device.refresh_from_db()
    assert device.next_poll_at == backoff_until


def _statements(queries, prefix, table):
    return [query["sql"] for query in queries if query["sql"].lstrip().startswith(prefix) and table in query["sql"]]


def test_batch_status_updates_fewer_than_devices(alpha, register_server):
    devices = [DeviceFactory(port=register_server.port, unit_id=1) for _ in range(5)]
    for device in devices:
        PointFactory(device=device, address=0, data_type="uint16", sensor=SensorFactory(minimum=0, maximum=100))

    with CaptureQueriesContext(connection) as queries:
        summary = poll_due_devices()

    device_updates = _statements(queries.captured_queries, "UPDATE", '"protocols_device"')
    assert summary.polled == 5
    assert summary.failed == 0
    # One UPDATE leases the devices; the status needs fewer statements than devices.
    assert 2 <= len(device_updates) < 5
    assert set(Device.objects.values_list("status", flat=True)) == {DeviceStatus.ONLINE}
    assert Reading.objects.count() == 5


def test_unchanged_point_errors_write_nothing(alpha, register_server):
    device = DeviceFactory(port=register_server.port, unit_id=1)
    missing = PointFactory(device=device, address=5000, data_type="uint16", sensor=SensorFactory(minimum=None))
    poll_due_devices()
    Device.objects.filter(pk=device.pk).update(next_poll_at=timezone.now())
    before = _row_version(missing)

    poll_due_devices()

    missing.refresh_from_db()
    assert missing.last_error == "holding 5000: exception 2 (illegal data address)"
    assert _row_version(missing) == before, "an unchanged error must not rewrite the point's row"


def _row_version(point):
    with connection.cursor() as cursor:
        cursor.execute("SELECT xmin::text, ctid::text FROM protocols_point WHERE id = %s", [point.pk])
        return cursor.fetchone()


def test_failed_poll_keeps_last_seen(alpha, register_server):
    healthy = DeviceFactory(port=register_server.port, unit_id=1)
    PointFactory(device=healthy, address=0, data_type="uint16", sensor=SensorFactory(minimum=0, maximum=100))
    failing = DeviceFactory(port=register_server.port, unit_id=1, timeout=0.5)
    PointFactory(device=failing, address=1, data_type="uint16", sensor=SensorFactory(minimum=0, maximum=100))
    poll_due_devices()
    failing.refresh_from_db()
    seen_online = failing.last_seen

    Device.objects.filter(pk=failing.pk).update(port=free_port())
    Device.objects.update(next_poll_at=timezone.now())
    summary = poll_due_devices()

    healthy.refresh_from_db()
    failing.refresh_from_db()
    assert summary.polled == 2
    assert summary.failed == 1
    assert seen_online is not None
    assert failing.last_seen == seen_online
    assert failing.status == DeviceStatus.OFFLINE
    assert failing.error_count == 1
    assert failing.consecutive_failures == 1
    assert healthy.status == DeviceStatus.ONLINE
    assert healthy.last_seen > seen_online
    assert healthy.error_count == 0


def test_device_read_again_only_after_change(alpha, register_server):
    device = DeviceFactory(port=register_server.port, unit_id=1)
    PointFactory(device=device, address=0, data_type="uint16", sensor=SensorFactory(minimum=0, maximum=100))
    poll_due_devices()

    Device.objects.filter(pk=device.pk).update(next_poll_at=timezone.now())
    with CaptureQueriesContext(connection) as unchanged:
        poll_due_devices()
    Device.objects.filter(pk=device.pk).update(port=free_port(), next_poll_at=timezone.now())
    with CaptureQueriesContext(connection) as changed:
        summary = poll_due_devices()

    device.refresh_from_db()
    assert _statements(unchanged.captured_queries, "SELECT", '"protocols_device"') == []
    # One SELECT compares the configuration digests, one reads the changed device again.
    assert len(_statements(changed.captured_queries, "SELECT", '"protocols_device"')) == 2
    assert summary.failed == 1
    assert device.status == DeviceStatus.OFFLINE
    assert "connection refused" in device.last_error


def test_device_deleted_after_claim_is_skipped(alpha, register_server):
    device = DeviceFactory(port=register_server.port, unit_id=1)
    PointFactory(device=device, address=0, data_type="uint16", sensor=SensorFactory(minimum=0, maximum=100))
    poll_due_devices()
    # A claim saw a new configuration token, and the device was deleted before the cache was compared.
    Device.objects.filter(pk=device.pk).delete()

    read = _verify_cache("alpha", [device.pk], uuid.uuid4())
    devices = _cached_devices("alpha", [(device.pk, DeviceStatus.ONLINE, 0)])

    assert read is False
    assert devices == []
    assert ("alpha", device.pk) not in _device_cache


def _config_token():
    with connection.cursor() as cursor:
        cursor.execute("SELECT token FROM protocols_configversion")
        return cursor.fetchone()[0]


def test_config_token_follows_configuration(alpha):
    device = DeviceFactory()
    point = PointFactory(device=device)
    tokens = [_config_token()]

    Device.objects.filter(pk=device.pk).update(status=DeviceStatus.ONLINE, next_poll_at=timezone.now(), error_count=3)
    tokens.append(_config_token())
    Device.objects.filter(pk=device.pk).update(port=1502)
    tokens.append(_config_token())
    Point.objects.filter(pk=point.pk).update(last_error="holding 0: exception 2")
    tokens.append(_config_token())
    Point.objects.filter(pk=point.pk).update(scale=2.0)
    tokens.append(_config_token())
    device.save()
    tokens.append(_config_token())
    DeviceFactory()
    tokens.append(_config_token())

    assert tokens[1] == tokens[0], "device status columns must leave the token alone"
    assert tokens[2] != tokens[1]
    assert tokens[3] == tokens[2], "a point's last_error must leave the token alone"
    assert tokens[4] != tokens[3]
    assert tokens[5] != tokens[4]
    assert tokens[6] != tokens[5]


def _watched_columns(trigger, table):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attribute.attname FROM pg_trigger AS trigger"
            " JOIN pg_attribute AS attribute ON attribute.attrelid = trigger.tgrelid"
            " AND attribute.attnum = ANY(trigger.tgattr)"
            " WHERE trigger.tgname = %s AND trigger.tgrelid = %s::regclass",
            [trigger, table],
        )
        return {row[0] for row in cursor.fetchall()}


def test_config_trigger_covers_every_setting(alpha):
    device_columns = {field.column for field in Device._meta.concrete_fields}
    point_columns = {field.column for field in Point._meta.concrete_fields}

    assert _watched_columns("protocols_device_configured", "protocols_device") == (
        device_columns - set(DEVICE_STATUS_COLUMNS) - {"id"}
    )
    assert _watched_columns("protocols_point_configured", "protocols_point") == point_columns - {"id", "last_error"}


def test_flapping_point_error_needs_no_check(alpha, register_server):
    device = DeviceFactory(port=register_server.port, unit_id=1)
    flapping = PointFactory(device=device, address=0, data_type="uint16", sensor=SensorFactory(minimum=None))
    others = [DeviceFactory(port=register_server.port, unit_id=1) for _ in range(3)]
    for other in others:
        PointFactory(device=other, address=1, data_type="uint16", sensor=SensorFactory(minimum=None))
    selects = []
    errors = []
    for word in (1, 0xFFFF, 1, 0xFFFF):
        register_server.set("holding", 0, [word])
        Device.objects.update(next_poll_at=timezone.now())
        with CaptureQueriesContext(connection) as queries:
            poll_due_devices()
        selects.append(len(_statements(queries.captured_queries, "SELECT", '"protocols_point"')))
        flapping.refresh_from_db()
        errors.append(flapping.last_error)

    assert selects[1:] == [0, 0, 0]
    assert errors == ["", "holding 0: registers [0xFFFF] are the 'not implemented' marker of uint16"] * 2


def test_error_of_other_worker_is_cleared(alpha, register_server):
    register_server.set("holding", 0, [7])
    device = DeviceFactory(port=register_server.port, unit_id=1)
    point = PointFactory(device=device, address=0, data_type="uint16", sensor=SensorFactory(minimum=None))
    poll_due_devices()
    # Another worker process polled the device meanwhile and stored an error this process never saw.
    Point.objects.filter(pk=point.pk).update(last_error="holding 0: exception 4 (server device failure)")
    Device.objects.filter(pk=device.pk).update(next_poll_at=timezone.now())

    poll_due_devices()

    point.refresh_from_db()
    assert point.last_error == ""


def test_unreadable_points_fail_only_their_device(alpha, register_server):
    register_server.set("holding", 0, [5])
    healthy = DeviceFactory(port=register_server.port, unit_id=1)
    good = PointFactory(device=healthy, address=0, data_type="uint16", sensor=SensorFactory(minimum=0, maximum=100))
    # An MQTT device switched to Modbus keeps its MQTT points, which have no register address.
    switched = DeviceFactory(protocol="mqtt", port=register_server.port)
    PointFactory(device=switched, address=None, topic="plant/boiler1/temp", data_type="float32")
    Device.objects.filter(pk=switched.pk).update(protocol="modbus_tcp")

    first = poll_due_devices()
    Device.objects.update(next_poll_at=timezone.now())
    second = poll_due_devices()

    switched.refresh_from_db()
    assert (first.polled, first.failed) == (2, 1)
    assert (second.polled, second.failed) == (2, 1)
    assert list(Reading.objects.filter(sensor=good.sensor).values_list("value", flat=True)) == [5.0, 5.0]
    assert switched.status == DeviceStatus.ERROR
    assert switched.last_error.startswith("The points of this modbus_tcp device cannot be read:")


def test_unchanged_configuration_costs_no_query(alpha, register_server):
    device = DeviceFactory(port=register_server.port, unit_id=1)
    PointFactory(device=device, address=0, data_type="uint16", sensor=SensorFactory(minimum=0, maximum=100))
    poll_due_devices()
    Device.objects.filter(pk=device.pk).update(next_poll_at=timezone.now())

    with CaptureQueriesContext(connection) as queries:
        summary = poll_due_devices()

    assert summary.polled == 1
    assert _statements(queries.captured_queries, "SELECT", '"protocols_point"') == []
    assert _statements(queries.captured_queries, "SELECT", '"protocols_device"') == []


def test_point_added_between_polls_is_read(alpha, register_server):
    register_server.set("holding", 7, [42])
    device = DeviceFactory(port=register_server.port, unit_id=1)
    PointFactory(device=device, address=0, data_type="uint16", sensor=SensorFactory(minimum=0, maximum=100))
    poll_due_devices()

    added = PointFactory(device=device, address=7, data_type="uint16", sensor=SensorFactory(minimum=0, maximum=100))
    Device.objects.filter(pk=device.pk).update(next_poll_at=timezone.now())
    poll_due_devices()

    assert Reading.objects.get(sensor=added.sensor).value == 42


def test_disabled_point_is_no_longer_read(alpha, register_server):
    device = DeviceFactory(port=register_server.port, unit_id=1)
    point = PointFactory(device=device, address=0, data_type="uint16", sensor=SensorFactory(minimum=0, maximum=100))
    poll_due_devices()

    Point.objects.filter(pk=point.pk).update(enabled=False)
    Device.objects.filter(pk=device.pk).update(next_poll_at=timezone.now())
    poll_due_devices()

    assert Reading.objects.filter(sensor=point.sensor).count() == 1


def test_queued_poll_is_stored_by_the_ingest_process(alpha, plant_simulator, settings):
    from apps.telemetry import intake

    settings.TELEMETRY_INTAKE_QUEUE = True
    intake.get_client.cache_clear()
    intake.get_client().delete(intake.STREAM_KEY)
    configure_demo_plant(port=plant_simulator)
    points = Point.objects.count()

    summary = poll_due_devices()

    assert summary.samples == points
    assert Reading.objects.count() == 0
    assert intake.backlog()["length"] == 1
    intake.consume("test-poller", once=True)
    assert Reading.objects.count() == points
    assert intake.backlog()["length"] == 0
    assert set(Device.objects.values_list("status", flat=True)) == {DeviceStatus.ONLINE}
