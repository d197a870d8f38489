"""WebSocket credentials: API keys, the tenant's allowed networks, and account events that close open sockets.

The consumers read users from worker threads, so the users, keys and tenant
changes here are committed and removed again afterwards.
"""

import time
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context

from apps.accounts.choices import Role
from apps.accounts.services import create_api_key, revoke_api_key
from apps.accounts.tokens import TenantTokenObtainPairSerializer
from apps.audit.choices import AuditAction, Outcome
from apps.audit.models import AuditEntry
from apps.dashboards.groups import unit_group
from apps.tenants.models import Tenant
from apps.tenants.services import resume_tenant, suspend_tenant
from tests.conftest import SOCKET_TIMEOUT, TENANT_DOMAINS, access_token_for, admin_of, refusal_code
from tests.factories import SensorFactory
from thermacore.asgi import application

PASSWORD = "Plant-room-key-8842"
HOST = TENANT_DOMAINS["alpha"]
# Account events must close the sockets they end within this many seconds.
CLOSE_DEADLINE_SECONDS = 1.0


def _socket(headers, path="/ws/live/?format=json", client_ip=None):
    communicator = WebsocketCommunicator(application, path, headers=[(b"host", HOST.encode()), *headers])
    if client_ip is not None:
        # The application reads the scope only once the first await runs, so this still counts.
        communicator.scope["client"] = (client_ip, 50000)
    return communicator


def _bearer(token):
    return [(b"authorization", f"Bearer {token}".encode())]


def _api_key_header(key):
    return [(b"authorization", f"Api-Key {key}".encode())]


@pytest.fixture
def committed(django_db_setup, django_db_blocker):
    """Create committed users and API keys in alpha; everything created is deleted afterwards."""
    created = []

    class Factory:
        def user(self, role=Role.VIEWER):
            with schema_context("alpha"):
                user = get_user_model().objects.create_user(
                    username=f"socket-{uuid.uuid4().hex[:8]}", password=PASSWORD, role=role
                )
            created.append(user.pk)
            return user

        def api_key(self, role=Role.VIEWER):
            with schema_context("alpha"):
                api_key, key = create_api_key(name="socket test", role=role, actor=admin_of("alpha"))
            created.append(api_key.user_id)
            return api_key, key

    with django_db_blocker.unblock():
        yield Factory()
        with schema_context("alpha"):
            get_user_model().objects.filter(pk__in=created).delete()
        connection.set_schema_to_public()


@pytest.fixture
def alpha_networks(django_db_setup, django_db_blocker):
    """Set alpha's allowed networks (committed) for one test; cleared afterwards."""

    def change(networks):
        Tenant.objects.filter(schema_name="alpha").update(api_allowed_networks=networks)

    with django_db_blocker.unblock():
        yield change
        change([])


async def _close_of(communicator, timeout=SOCKET_TIMEOUT):
    message = await communicator.receive_output(timeout=timeout)
    assert message["type"] == "websocket.close", message
    return message


@pytest.mark.asyncio
async def test_api_key_opens_live_socket(committed):
    _api_key, key = await sync_to_async(committed.api_key)()
    communicator = _socket(_api_key_header(key))

    connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
    await communicator.disconnect()

    assert connected is True


@pytest.mark.asyncio
async def test_api_key_role_scopes_socket(committed):
    _api_key, key = await sync_to_async(committed.api_key)(Role.AUDITOR)
    communicator = _socket(_api_key_header(key))

    code = await refusal_code(communicator)

    assert code == 4403


@pytest.mark.asyncio
async def test_revoked_api_key_is_rejected(committed):
    def revoked_key():
        api_key, key = committed.api_key()
        with schema_context("alpha"):
            revoke_api_key(api_key, actor=admin_of("alpha"))
        return key

    key = await sync_to_async(revoked_key)()
    communicator = _socket(_api_key_header(key))

    code = await refusal_code(communicator)

    assert code == 4401


@pytest.mark.asyncio
async def test_unknown_api_key_is_rejected(committed):
    communicator = _socket(_api_key_header("nothere.secretsecret"))

    code = await refusal_code(communicator)

    assert code == 4401


@pytest.mark.asyncio
async def test_api_key_in_query_string_is_ignored(committed):
    _api_key, key = await sync_to_async(committed.api_key)()
    communicator = _socket([], path=f"/ws/live/?format=json&api_key={key}")

    code = await refusal_code(communicator)

    assert code == 4401


@pytest.mark.asyncio
async def test_api_key_of_other_tenant_is_rejected(committed):
    _api_key, key = await sync_to_async(committed.api_key)()
    communicator = WebsocketCommunicator(
        application, "/ws/live/", headers=[(b"host", TENANT_DOMAINS["beta"].encode()), *_api_key_header(key)]
    )

    code = await refusal_code(communicator)

    assert code == 4401


@pytest.mark.asyncio
async def test_foreign_network_socket_closes_4403_and_is_audited(committed, alpha_networks):
    user = await sync_to_async(committed.user)()
    token = await sync_to_async(access_token_for)("alpha", user)
    await sync_to_async(alpha_networks)(["10.20.0.0/16"])
    communicator = _socket(_bearer(token), client_ip="127.0.0.1")

    connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
    closed = await _close_of(communicator)

    def denials():
        with schema_context("alpha"):
            return list(
                AuditEntry.objects.filter(action=AuditAction.PERMISSION_DENIED, actor_id=str(user.pk))
                .values("outcome", "source_ip", "detail")
            )

    entries = await sync_to_async(denials)()
    assert connected is True
    assert closed["code"] == 4403
    assert "127.0.0.1" in closed["reason"]
    assert len(entries) == 1
    assert entries[0]["outcome"] == Outcome.DENIED
    assert entries[0]["source_ip"] == "127.0.0.1"
    assert entries[0]["detail"]["code"] == "network_not_allowed"
    assert entries[0]["detail"]["path"] == "/ws/live/"


@pytest.mark.asyncio
async def test_foreign_network_rejects_api_key_socket(committed, alpha_networks):
    _api_key, key = await sync_to_async(committed.api_key)()
    await sync_to_async(alpha_networks)(["10.20.0.0/16"])
    communicator = _socket(_api_key_header(key), client_ip="192.0.2.7")

    await communicator.connect(timeout=SOCKET_TIMEOUT)
    closed = await _close_of(communicator)

    assert closed["code"] == 4403


@pytest.mark.asyncio
async def test_anonymous_foreign_socket_is_rejected_unaudited(alpha_networks, django_db_blocker):
    def denial_count():
        with schema_context("alpha"):
            return AuditEntry.objects.filter(action=AuditAction.PERMISSION_DENIED).count()

    await sync_to_async(alpha_networks)(["10.20.0.0/16"])
    before = await sync_to_async(denial_count)()
    communicator = _socket([], client_ip="192.0.2.8")

    await communicator.connect(timeout=SOCKET_TIMEOUT)
    closed = await _close_of(communicator)

    assert closed["code"] == 4403
    assert await sync_to_async(denial_count)() == before


@pytest.mark.asyncio
async def test_allowed_network_socket_is_accepted(committed, alpha_networks):
    user = await sync_to_async(committed.user)()
    token = await sync_to_async(access_token_for)("alpha", user)
    await sync_to_async(alpha_networks)(["10.20.0.0/16", "127.0.0.0/8"])
    communicator = _socket(_bearer(token), client_ip="127.0.0.1")

    connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
    await communicator.disconnect()

    assert connected is True


@pytest.mark.asyncio
async def test_forwarded_address_is_ignored_without_proxy_setting(committed, alpha_networks):
    user = await sync_to_async(committed.user)()
    token = await sync_to_async(access_token_for)("alpha", user)
    await sync_to_async(alpha_networks)(["10.20.0.0/16"])
    communicator = _socket([*_bearer(token), (b"x-forwarded-for", b"10.20.1.1")], client_ip="127.0.0.1")

    await communicator.connect(timeout=SOCKET_TIMEOUT)
    closed = await _close_of(communicator)

    assert closed["code"] == 4403


async def _open(communicator):
    connected, code = await communicator.connect(timeout=SOCKET_TIMEOUT)
    assert connected, code
    return communicator


async def _closed_within_deadline(communicator, event):
    """Run the synchronous ``event``, then return the close message and the seconds it took to arrive."""
    started = time.monotonic()
    await sync_to_async(event)()
    closed = await _close_of(communicator, timeout=CLOSE_DEADLINE_SECONDS * 5)
    return closed, time.monotonic() - started


def _session_socket(client):
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    return _socket([(b"cookie", cookie.encode()), (b"origin", f"http://{HOST}".encode())])


@pytest.mark.asyncio
async def test_logout_closes_session_socket_only(committed):
    user = await sync_to_async(committed.user)()

    def log_in():
        client = Client(HTTP_HOST=HOST)
        with schema_context("alpha"):
            client.force_login(user)
        return client

    leaving = await sync_to_async(log_in)()
    staying = await sync_to_async(log_in)()
    leaving_socket = await _open(_session_socket(leaving))
    staying_socket = await _open(_session_socket(staying))

    closed, seconds = await _closed_within_deadline(leaving_socket, lambda: leaving.post("/accounts/logout/"))

    assert closed["code"] == 4401
    assert closed["reason"] == "Logged out."
    assert seconds < CLOSE_DEADLINE_SECONDS
    assert await staying_socket.receive_nothing(timeout=0.3)
    await staying_socket.disconnect()


def _set_user(user, **fields):
    with schema_context("alpha"):
        for name, value in fields.items():
            setattr(user, name, value)
        user.save()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"role": Role.OPERATOR}, "Role changed; reconnect."),
        ({"is_active": False}, "Account deactivated."),
        ({"password": "changed"}, "Password changed; log in again."),
    ],
)
async def test_account_change_closes_user_sockets(committed, change, reason):
    user = await sync_to_async(committed.user)()
    other = await sync_to_async(committed.user)()
    token = await sync_to_async(access_token_for)("alpha", user)
    other_token = await sync_to_async(access_token_for)("alpha", other)
    first = await _open(_socket(_bearer(token)))
    second = await _open(_socket(_bearer(token), path="/ws/live/"))
    bystander = await _open(_socket(_bearer(other_token)))

    closed, seconds = await _closed_within_deadline(first, lambda: _set_user(user, **change))
    second_closed = await _close_of(second, timeout=CLOSE_DEADLINE_SECONDS)

    assert closed["code"] == 4401
    assert closed["reason"] == reason
    assert seconds < CLOSE_DEADLINE_SECONDS
    assert second_closed["code"] == 4401
    assert await bystander.receive_nothing(timeout=0.3)
    await bystander.disconnect()


@pytest.mark.asyncio
async def test_unrelated_user_save_keeps_socket(committed):
    user = await sync_to_async(committed.user)()
    token = await sync_to_async(access_token_for)("alpha", user)
    communicator = await _open(_socket(_bearer(token)))

    await sync_to_async(_set_user)(user, first_name="Renamed")

    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_api_key_revocation_closes_its_socket(committed):
    api_key, key = await sync_to_async(committed.api_key)()
    communicator = await _open(_socket(_api_key_header(key)))

    def revoke():
        with schema_context("alpha"):
            revoke_api_key(api_key, actor=admin_of("alpha"))

    closed, seconds = await _closed_within_deadline(communicator, revoke)

    assert closed["code"] == 4401
    assert closed["reason"] == "API key revoked."
    assert seconds < CLOSE_DEADLINE_SECONDS


@pytest.mark.asyncio
async def test_tenant_suspension_closes_its_sockets(committed):
    user = await sync_to_async(committed.user)()
    token = await sync_to_async(access_token_for)("alpha", user)
    beta_token = await sync_to_async(lambda: access_token_for("beta", admin_of("beta")))()
    communicator = await _open(_socket(_bearer(token)))
    beta_socket = await _open(WebsocketCommunicator(
        application, "/ws/live/", headers=[(b"host", TENANT_DOMAINS["beta"].encode()), *_bearer(beta_token)]
    ))
    actor, _ = await sync_to_async(get_user_model().objects.get_or_create)(
        username="ws-suspender", defaults={"is_superuser": True}
    )
    alpha = await sync_to_async(Tenant.objects.get)(schema_name="alpha")

    try:
        closed, seconds = await _closed_within_deadline(
            communicator, lambda: suspend_tenant(alpha, actor=actor, reason="Socket test")
        )
    finally:
        await sync_to_async(resume_tenant)(alpha, actor=actor)

    assert closed["code"] == 4403
    assert closed["reason"].startswith("Tenant suspended")
    assert seconds < CLOSE_DEADLINE_SECONDS
    assert await beta_socket.receive_nothing(timeout=0.3)
    await beta_socket.disconnect()


@pytest.mark.asyncio
async def test_expired_token_closes_before_next_push(committed):
    def short_token_and_unit():
        user = committed.user()
        with schema_context("alpha"):
            token = TenantTokenObtainPairSerializer.get_token(user).access_token
            token.set_exp(lifetime=timedelta(seconds=1))
            sensor = SensorFactory()
        return str(token), sensor

    token, sensor = await sync_to_async(short_token_and_unit)()
    communicator = await _open(_socket(_bearer(token), path=f"/ws/live/?format=json&unit={sensor.unit_id}"))
    await sync_to_async(time.sleep)(1.2)

    reading = {"sensor": sensor.pk, "time": "2026-01-01T00:00:00+00:00", "value": 1.0, "quality": 0}
    await get_channel_layer().group_send(unit_group("alpha", sensor.unit_id),
                                         {"type": "readings.update", "readings": [reading]})
    closed = await _close_of(communicator)

    def remove_sensor():
        with schema_context("alpha"):
            unit = sensor.unit
            sensor.delete()
            unit.delete()
            unit.site.delete()

    await sync_to_async(remove_sensor)()
    assert closed["code"] == 4401
    assert closed["reason"].startswith("Token or API key expired")


def test_session_group_hides_session_key():
    from apps.accounts.sockets import session_group, tenant_group, user_group

    names = {user_group("alpha", 1), session_group("alpha", "1"), tenant_group("alpha"), user_group("beta", 1)}

    assert len(names) == 4
    assert "secret-session-key" not in session_group("alpha", "secret-session-key")
