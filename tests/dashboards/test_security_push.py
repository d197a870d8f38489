"""Live push of security alarms, which have no unit: only users who may see them receive them."""

import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connection
from django_tenants.utils import schema_context

from apps.accounts.choices import Role
from apps.alarms.push import send_alarm_update
from tests.conftest import SOCKET_TIMEOUT, TENANT_DOMAINS, access_token_for, admin_of
from thermacore.asgi import application

HOST = TENANT_DOMAINS["alpha"]
# A socket that must not receive the alarm gets this long to prove it.
SILENCE_SECONDS = 1.0


def security_payload():
    return {"id": 987654, "source": "security", "key": "failed_login_burst:username=admin", "state": "unack"}


@pytest.fixture
def viewer(django_db_setup, django_db_blocker):
    """A committed viewer of alpha, deleted afterwards."""
    with django_db_blocker.unblock():
        with schema_context("alpha"):
            user = get_user_model().objects.create_user(
                username=f"viewer-{uuid.uuid4().hex[:8]}", password="Plant-room-key-8842", role=Role.VIEWER
            )
        yield user
        with schema_context("alpha"):
            user.delete()
        connection.set_schema_to_public()


@pytest.fixture
def admin(django_db_setup, django_db_blocker):
    # The consumer reads the user from a worker thread, so the test runs with the database unblocked.
    with django_db_blocker.unblock():
        yield admin_of("alpha")
        connection.set_schema_to_public()


async def open_socket(user):
    token = await sync_to_async(access_token_for)("alpha", user)
    communicator = WebsocketCommunicator(
        application,
        "/ws/live/?format=json",
        headers=[(b"host", HOST.encode()), (b"authorization", f"Bearer {token}".encode())],
    )
    connected, code = await communicator.connect(timeout=SOCKET_TIMEOUT)
    assert connected is True, code
    return communicator


@pytest.mark.asyncio
async def test_admin_socket_receives_security_alarm(admin):
    communicator = await open_socket(admin)

    await sync_to_async(send_alarm_update)("alpha", None, security_payload())
    message = await communicator.receive_json_from(timeout=SOCKET_TIMEOUT)
    await communicator.disconnect()

    assert message["type"] == "alarm"
    assert message["alarm"]["key"] == "failed_login_burst:username=admin"


@pytest.mark.asyncio
async def test_viewer_socket_misses_security_alarm(viewer):
    communicator = await open_socket(viewer)

    await sync_to_async(send_alarm_update)("alpha", None, security_payload())
    nothing = await communicator.receive_nothing(timeout=SILENCE_SECONDS)
    await communicator.disconnect()

    assert nothing is True


@pytest.mark.asyncio
async def test_other_tenant_admin_misses_security_alarm(admin):
    communicator = await open_socket(admin)

    await sync_to_async(send_alarm_update)("beta", None, security_payload())
    nothing = await communicator.receive_nothing(timeout=SILENCE_SECONDS)
    await communicator.disconnect()

    assert nothing is True
