from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from apps.alarms.choices import AlarmState
from apps.alarms.models import Alarm
from apps.alarms.push import alarm_payload, send_alarm_update
from tests.conftest import SOCKET_TIMEOUT, TENANT_DOMAINS, access_token_for, admin_of
from thermacore.asgi import application

from .conftest import at

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def active_alarm(sensor, make_rule, feed):
    make_rule(condition="hi", limit=100.0, rationale="Burner overfiring; reduce the firing rate.")
    feed(sensor, (at(0), 105.0))
    return Alarm.objects.get()


def test_alarm_page_lists_alarm_with_buttons(alpha_client, active_alarm):
    response = alpha_client.get("/alarms/")

    assert response.status_code == 200
    assert "<html" in response.text
    assert f'id="alarm-{active_alarm.pk}"' in response.text
    assert active_alarm.message in response.text
    assert "Burner overfiring" in response.text
    assert f'hx-post="/alarms/{active_alarm.pk}/acknowledge/"' in response.text
    assert f'hx-post="/alarms/{active_alarm.pk}/shelve/"' in response.text
    assert 'ws-connect="/ws/live/"' in response.text


def test_alarm_page_htmx_request_gets_table_only(alpha_client, active_alarm):
    response = alpha_client.get("/alarms/", **HTMX)

    assert response.status_code == 200
    assert "<html" not in response.text
    assert f'id="alarm-{active_alarm.pk}"' in response.text


def test_alarm_page_unknown_view_is_bad_request(alpha_client):
    response = alpha_client.get("/alarms/", {"view": "everything"})

    assert response.status_code == 400
    assert "everything" in response.text


def test_acknowledge_button_returns_updated_row(alpha_client, active_alarm):
    response = alpha_client.post(f"/alarms/{active_alarm.pk}/acknowledge/", {"comment": ""}, **HTMX)
    again = alpha_client.post(f"/alarms/{active_alarm.pk}/acknowledge/", {}, **HTMX)

    assert response.status_code == 200
    assert "Active, acknowledged" in response.text
    assert "acknowledged by admin" in response.text
    assert "already acknowledged by admin" in again.text
    assert Alarm.objects.get().state == AlarmState.ACTIVE_ACKNOWLEDGED


def test_shelve_button_moves_alarm_to_shelved_list(alpha_client, active_alarm):
    response = alpha_client.post(
        f"/alarms/{active_alarm.pk}/shelve/", {"comment": "Known fault", "minutes": "60"}, **HTMX
    )
    listed = alpha_client.get("/alarms/", **HTMX)
    shelved = alpha_client.get("/alarms/", {"view": "shelved"}, **HTMX)
    unshelved = alpha_client.post(f"/alarms/{active_alarm.pk}/unshelve/", **HTMX)

    assert response.status_code == 200
    assert "Known fault" in response.text
    assert f'id="alarm-{active_alarm.pk}"' not in listed.text
    assert f'hx-post="/alarms/{active_alarm.pk}/unshelve/"' in shelved.text
    assert "Active, unacknowledged" in unshelved.text


@pytest.mark.parametrize("minutes", ["soon", "0", "5000"])
def test_shelve_button_with_invalid_duration_is_bad_request(alpha_client, active_alarm, minutes):
    response = alpha_client.post(f"/alarms/{active_alarm.pk}/shelve/", {"comment": "x", "minutes": minutes}, **HTMX)

    assert response.status_code == 400
    assert minutes in response.text
    assert Alarm.objects.get().state == AlarmState.ACTIVE_UNACKNOWLEDGED


def test_acknowledge_button_without_permission_is_forbidden(alpha, active_alarm):
    viewer = get_user_model().objects.create_user("viewer", password="Viewer-pass-4711")
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(viewer)

    response = client.post(f"/alarms/{active_alarm.pk}/acknowledge/", **HTMX)

    assert response.status_code == 403
    assert Alarm.objects.get().state == AlarmState.ACTIVE_UNACKNOWLEDGED


def test_banner_counts_unacknowledged_by_priority(alpha_client, active_alarm):
    response = alpha_client.get("/alarms/banner/", **HTMX)

    assert response.status_code == 200
    assert "1 unacknowledged alarm" in response.text
    assert "High: 1" in response.text
    assert response["HX-Trigger"] == "alarmsChanged"


def test_every_page_loads_banner(alpha_client):
    response = alpha_client.get("/")

    assert 'hx-get="/alarms/banner/"' in response.text


@pytest.mark.asyncio
@pytest.mark.parametrize(("query", "expected"), [("format=json", "json"), ("", "html")])
async def test_alarm_update_reaches_socket(committed_alarm, django_db_blocker, query, expected):
    alarm, _users = committed_alarm
    payload = alarm_payload(alarm)
    with django_db_blocker.unblock():
        token = await sync_to_async(lambda: access_token_for("alpha", admin_of("alpha")))()
        communicator = WebsocketCommunicator(
            application,
            f"/ws/live/?unit={alarm.unit_id}&{query}",
            headers=[(b"host", TENANT_DOMAINS["alpha"].encode()), (b"authorization", f"Bearer {token}".encode())],
        )
        connected, _ = await communicator.connect(timeout=SOCKET_TIMEOUT)
        assert connected
        await sync_to_async(send_alarm_update)("alpha", alarm.unit_id, payload)
        message = await communicator.receive_from(timeout=5)
        await communicator.disconnect()

    if expected == "json":
        assert f'"id": {alarm.pk}' in message
        assert '"state": "active_unack"' in message
    else:
        assert 'id="alarm-banner"' in message
        assert 'hx-swap-oob="true"' in message
        assert 'hx-get="/alarms/banner/"' in message


def test_alarm_page_shows_kpi_summary(alpha_client, sensor, make_rule, feed):
    from django.utils import timezone

    make_rule(condition="hi", limit=100.0, message="Boiler supply too hot")
    now = timezone.now()
    feed(sensor, (now - timedelta(minutes=30), 105.0), (now - timedelta(minutes=30) + timedelta(seconds=1), 90.0))
    feed(sensor, (now - timedelta(minutes=5), 106.0))

    page = alpha_client.get("/alarms/")
    partial = alpha_client.get("/alarms/", **HTMX)

    assert page.status_code == 200
    assert 'data-kpi="annunciated">2<' in page.text
    assert 'data-kpi="fleeting">1<' in page.text
    assert "Top bad actor: Boiler supply too hot (2, 100.0 %)" in page.text
    assert "alarm-kpis" not in partial.text
