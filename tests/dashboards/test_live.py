from datetime import datetime, timezone

import pytest
from channels.testing import WebsocketCommunicator

from apps.sensors.samples import Sample
from apps.telemetry.ingest import ingest
from tests.conftest import SOCKET_TIMEOUT, TENANT_DOMAINS, refusal_code
from tests.factories import SensorFactory
from thermacore.asgi import application


def test_live_page_requires_login(alpha):
    from django.test import Client

    response = Client(HTTP_HOST=TENANT_DOMAINS["alpha"]).get("/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_live_page_shows_latest_value(alpha_client, django_capture_on_commit_callbacks):
    sensor = SensorFactory(name="Flow temperature", decimals=1, engineering_unit="°C")
    with django_capture_on_commit_callbacks(execute=True):
        ingest("alpha", [Sample(sensor.id, datetime.now(timezone.utc), 71.26)])

    response = alpha_client.get("/")

    assert response.status_code == 200
    assert "Flow temperature" in response.text
    assert f'id="sensor-{sensor.id}-value"' in response.text
    assert "71.3" in response.text
    assert 'ws-connect="/ws/live/"' in response.text


def test_unit_page_loads_chart_assets(alpha_client):
    sensor = SensorFactory()

    response = alpha_client.get(f"/units/{sensor.unit_id}/")

    assert response.status_code == 200
    assert "vendor/uplot/uPlot.iife.min.js" in response.text
    assert f'data-trend-sensor="{sensor.id}"' in response.text


def test_static_assets_are_served_locally(alpha_client):
    for path in ("/static/vendor/uplot/uPlot.iife.min.js", "/static/django_htmx/ext/hx-ws-2.min.js"):
        response = alpha_client.get(path)
        assert response.status_code == 200, path


def test_unknown_host_page_is_rejected(db):
    from django.test import Client

    response = Client(HTTP_HOST="nobody.localhost").get("/")

    assert response.status_code == 400


@pytest.mark.asyncio
@pytest.mark.django_db
async def test_websocket_without_credentials_is_refused():
    communicator = WebsocketCommunicator(application, "/ws/live/", headers=[(b"host", TENANT_DOMAINS["alpha"].encode())])

    code = await refusal_code(communicator)

    assert code == 4401


@pytest.mark.asyncio
@pytest.mark.django_db
async def test_websocket_unknown_host_is_refused():
    communicator = WebsocketCommunicator(application, "/ws/live/", headers=[(b"host", b"nobody.localhost")])

    code = await refusal_code(communicator)

    assert code == 4404


def _bearer_socket(path, token):
    return WebsocketCommunicator(
        application, path,
        headers=[(b"host", TENANT_DOMAINS["alpha"].encode()), (b"authorization", f"Bearer {token}".encode())],
    )


@pytest.mark.asyncio
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "code"),
    [("unit=abc", 4400), ("format=xml", 4400), ("unit=99999999", 4404)],
)
async def test_websocket_bad_query_closes_with_code(query, code):
    from asgiref.sync import sync_to_async

    from tests.conftest import access_token_for, admin_of

    token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
    communicator = _bearer_socket(f"/ws/live/?{query}", token)

    connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
    closed = await communicator.receive_output(timeout=SOCKET_TIMEOUT)

    assert connected
    assert closed["type"] == "websocket.close"
    assert closed["code"] == code


@pytest.mark.asyncio
@pytest.mark.django_db
async def test_websocket_unknown_path_closes_4404():
    from asgiref.sync import sync_to_async

    from tests.conftest import access_token_for, admin_of

    token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
    communicator = _bearer_socket("/ws/other/", token)

    connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
    closed = await communicator.receive_output(timeout=SOCKET_TIMEOUT)

    assert connected
    assert closed["code"] == 4404


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "expected"),
    [
        ("http://alpha.localhost:8000", "alpha.localhost:8000", "ws", True),
        ("https://alpha.localhost", "alpha.localhost", "wss", True),
        ("null", "alpha.localhost:8000", "ws", False),
        ("", "alpha.localhost:8000", "ws", False),
        ("https://alpha.localhost:8000", "alpha.localhost:8000", "ws", False),
        ("http://evil.example:8000", "alpha.localhost:8000", "ws", False),
    ],
)
def test_same_origin_rules(origin, host, scheme, expected):
    from apps.accounts.asgi import same_origin

    assert same_origin(origin, host, scheme) is expected
