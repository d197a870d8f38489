from datetime import datetime, timezone

import pytest
from channels.testing import WebsocketCommunicator

from apps.telemetry.ingest import ingest
from apps.telemetry.samples import Sample
from tests.conftest import TENANT_DOMAINS
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


def test_unknown_host_page_is_not_found(db):
    from django.test import Client

    response = Client(HTTP_HOST="nobody.localhost").get("/")

    assert response.status_code == 404


@pytest.mark.asyncio
@pytest.mark.django_db
async def test_websocket_without_credentials_is_refused():
    communicator = WebsocketCommunicator(application, "/ws/live/", headers=[(b"host", TENANT_DOMAINS["alpha"].encode())])

    connected, code = await communicator.connect()

    assert not connected
    assert code == 4401


@pytest.mark.asyncio
@pytest.mark.django_db
async def test_websocket_unknown_host_is_refused():
    communicator = WebsocketCommunicator(application, "/ws/live/", headers=[(b"host", b"nobody.localhost")])

    connected, _ = await communicator.connect()

    assert not connected
