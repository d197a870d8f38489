"""Simulator registers → Celery poll task → tenant readings → API → WebSocket push.

The data here is committed, not rolled back, because the WebSocket consumer
reads it from connections of its own threads. The tenant is dropped again
at the end.
"""

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connection
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

from apps.protocols.simulator.demo import configure_demo_plant
from apps.protocols.tasks import poll_due_devices_task
from apps.sensors.models import Sensor
from apps.telemetry.models import Reading
from apps.tenants.services import provision_tenant
from apps.units.models import Unit
from tests.conftest import ADMIN_PASSWORD, SOCKET_TIMEOUT, TENANT_DOMAINS, access_token_for, admin_of, refusal_code
from thermacore.asgi import application

pytestmark = pytest.mark.slow

GAMMA_DOMAIN = "gamma.localhost"


@pytest.fixture
def gamma(django_db_setup, django_db_blocker, plant_simulator):
    """A committed tenant whose demo plant polls the simulator."""
    with django_db_blocker.unblock():
        tenant = provision_tenant(
            schema_name="gamma", name="Gamma", domain=GAMMA_DOMAIN,
            admin_username="admin", admin_password=ADMIN_PASSWORD,
        )
        with schema_context("gamma"):
            configure_demo_plant(port=plant_simulator)
            sensor_ids = set(Sensor.objects.values_list("id", flat=True))
            unit_ids = list(Unit.objects.values_list("id", flat=True))
            user = get_user_model().objects.get(username="admin")
        token = access_token_for("gamma", user)
        beta_token = access_token_for("beta", admin_of("beta"))
        yield {"sensor_ids": sensor_ids, "unit_ids": unit_ids, "token": token, "beta_token": beta_token}
        connection.set_schema_to_public()
        tenant.delete(force_drop=True)


def socket(domain, token, query):
    return WebsocketCommunicator(
        application,
        f"/ws/live/?{query}",
        headers=[(b"host", domain.encode()), (b"authorization", f"Bearer {token}".encode())],
    )


def run_poll_task():
    with schema_context("gamma"):
        return poll_due_devices_task.apply().get()


def gamma_readings_over_api(token, sensor_id):
    client = APIClient(HTTP_HOST=GAMMA_DOMAIN)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client.get(f"/api/v1/sensors/{sensor_id}/readings/")


@pytest.mark.asyncio
async def test_reading_travels_from_simulator_to_websocket(gamma, django_db_blocker):
    with django_db_blocker.unblock():
        gamma_socket = socket(GAMMA_DOMAIN, gamma["token"], "format=json")
        beta_socket = socket(TENANT_DOMAINS["beta"], gamma["beta_token"], "format=json")
        unit_query = "&".join(f"unit={unit_id}" for unit_id in gamma["unit_ids"])
        beta_asking_for_gamma_units = socket(TENANT_DOMAINS["beta"], gamma["beta_token"], f"format=json&{unit_query}")
        assert (await gamma_socket.connect(timeout=SOCKET_TIMEOUT))[0]
        assert (await beta_socket.connect(timeout=SOCKET_TIMEOUT))[0]
        assert (await beta_asking_for_gamma_units.connect(timeout=SOCKET_TIMEOUT))[0]
        closed = await beta_asking_for_gamma_units.receive_output(timeout=SOCKET_TIMEOUT)

        summary = await sync_to_async(run_poll_task)()

        pushed = {}
        while set(pushed) != gamma["sensor_ids"]:
            message = await gamma_socket.receive_json_from(timeout=SOCKET_TIMEOUT)
            assert message["type"] == "readings"
            pushed.update({reading["sensor"]: reading for reading in message["readings"]})
        assert await beta_socket.receive_nothing(timeout=0.5)
        await gamma_socket.disconnect()
        await beta_socket.disconnect()

        sensor_id = min(gamma["sensor_ids"])
        response = await sync_to_async(gamma_readings_over_api)(gamma["token"], sensor_id)
        stored = await sync_to_async(_stored_count)()

    assert closed["code"] == 4404
    assert summary == {"polled": 3, "failed": 0, "samples": len(gamma["sensor_ids"])}
    assert stored == len(gamma["sensor_ids"])
    assert response.status_code == 200
    assert len(response.data["results"]) == 1
    assert response.data["results"][0]["value"] == pushed[sensor_id]["value"]


def _stored_count():
    with schema_context("gamma"):
        return Reading.objects.count()


@pytest.mark.asyncio
async def test_token_of_gamma_cannot_open_beta_socket(gamma, django_db_blocker):
    with django_db_blocker.unblock():
        communicator = socket(TENANT_DOMAINS["beta"], gamma["token"], "format=json")

        code = await refusal_code(communicator)

    assert code == 4401
