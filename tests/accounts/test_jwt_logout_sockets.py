"""A JWT logout (POST /api/v1/auth/logout/) closes the WebSockets opened with access tokens of that login.

The consumers read users from worker threads, so the users here are
committed (the ``committed`` fixture) and deleted again afterwards.
"""

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django_tenants.utils import schema_context
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from apps.accounts.tokens import TENANT_CLAIM
from tests.conftest import refusal_code
from tests.dashboards.test_socket_credentials import (  # noqa: F401 (committed is a fixture)
    CLOSE_DEADLINE_SECONDS,
    HOST,
    PASSWORD,
    _bearer,
    _close_of,
    _closed_within_deadline,
    _open,
    _socket,
    committed,
)


def _post(path, body):
    response = APIClient(HTTP_HOST=HOST).post(path, body, format="json")
    connection.set_schema_to_public()
    return response


def _get_units(access):
    client = APIClient(HTTP_HOST=HOST)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    response = client.get("/api/v1/units/")
    connection.set_schema_to_public()
    return response


def _log_in(user):
    response = _post("/api/v1/auth/token/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 200, response.content
    return response.json()


def _log_out(refresh):
    response = _post("/api/v1/auth/logout/", {"refresh": refresh})
    assert response.status_code == 200, response.content


@pytest.mark.asyncio
async def test_jwt_logout_closes_sockets_of_that_login(committed):
    user = await sync_to_async(committed.user)()
    leaving = await sync_to_async(_log_in)(user)
    staying = await sync_to_async(_log_in)(user)
    first = await _open(_socket(_bearer(leaving["access"])))
    second = await _open(_socket(_bearer(leaving["access"]), path="/ws/live/"))
    other_login = await _open(_socket(_bearer(staying["access"])))

    closed, seconds = await _closed_within_deadline(first, lambda: _log_out(leaving["refresh"]))
    second_closed = await _close_of(second, timeout=CLOSE_DEADLINE_SECONDS)

    assert closed["code"] == 4401
    assert closed["reason"] == "Logged out."
    assert seconds < CLOSE_DEADLINE_SECONDS
    assert second_closed["code"] == 4401
    assert await other_login.receive_nothing(timeout=0.3)
    await other_login.disconnect()


@pytest.mark.asyncio
async def test_jwt_logout_closes_sockets_of_rotated_tokens(committed):
    user = await sync_to_async(committed.user)()
    pair = await sync_to_async(_log_in)(user)
    rotated = await sync_to_async(_post)("/api/v1/auth/token/refresh/", {"refresh": pair["refresh"]})
    assert rotated.status_code == 200, rotated.content
    newer = rotated.json()
    old_access_socket = await _open(_socket(_bearer(pair["access"])))
    new_access_socket = await _open(_socket(_bearer(newer["access"])))

    # The rotated refresh token belongs to the same login, so its logout ends both sockets.
    closed, seconds = await _closed_within_deadline(new_access_socket, lambda: _log_out(newer["refresh"]))
    old_closed = await _close_of(old_access_socket, timeout=CLOSE_DEADLINE_SECONDS)

    assert closed["reason"] == "Logged out."
    assert seconds < CLOSE_DEADLINE_SECONDS
    assert old_closed["code"] == 4401


@pytest.mark.asyncio
async def test_logged_out_access_token_opens_no_socket(committed):
    user = await sync_to_async(committed.user)()
    pair = await sync_to_async(_log_in)(user)
    await sync_to_async(_log_out)(pair["refresh"])

    # The access token itself is still valid for REST requests until it expires.
    rest = await sync_to_async(_get_units)(pair["access"])
    code = await refusal_code(_socket(_bearer(pair["access"])))

    assert rest.status_code == 200
    assert code == 4401


@pytest.mark.asyncio
async def test_failed_jwt_logout_keeps_sockets(committed):
    user = await sync_to_async(committed.user)()
    pair = await sync_to_async(_log_in)(user)
    communicator = await _open(_socket(_bearer(pair["access"])))

    response = await sync_to_async(_post)("/api/v1/auth/logout/", {"refresh": pair["access"]})

    assert response.status_code == 401
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_legacy_token_logout_closes_user_sockets(committed):
    user = await sync_to_async(committed.user)()
    other = await sync_to_async(committed.user)()

    def legacy_pair(owner):
        # A pair issued before tokens carried a login id: only the tenant claim.
        with schema_context("alpha"):
            refresh = RefreshToken.for_user(owner)
        refresh[TENANT_CLAIM] = "alpha"
        return {"access": str(refresh.access_token), "refresh": str(refresh)}

    pair = await sync_to_async(legacy_pair)(user)
    other_pair = await sync_to_async(legacy_pair)(other)
    communicator = await _open(_socket(_bearer(pair["access"])))
    bystander = await _open(_socket(_bearer(other_pair["access"])))

    closed, seconds = await _closed_within_deadline(communicator, lambda: _log_out(pair["refresh"]))

    assert closed["reason"] == "Logged out."
    assert seconds < CLOSE_DEADLINE_SECONDS
    assert await bystander.receive_nothing(timeout=0.3)
    await bystander.disconnect()
