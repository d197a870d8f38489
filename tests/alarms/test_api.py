from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from apps.alarms.choices import AlarmState, TransitionAction
from apps.alarms.models import Alarm, AlarmRule
from tests.conftest import TENANT_DOMAINS, access_token_for
from tests.factories import SensorFactory

from .conftest import at


@pytest.fixture
def alarms(sensor, make_rule, feed):
    """A high-priority active alarm on one unit and a low-priority returned one on another."""
    make_rule(condition="hi", limit=100.0, priority="high")
    feed(sensor, (at(0), 105.0))
    other = SensorFactory(minimum=0, maximum=200)
    AlarmRule.objects.create(sensor=other, condition="lo", limit=10.0, priority="low")
    feed(other, (at(0), 5.0), (at(10), 20.0))
    return Alarm.objects.get(rule__sensor=sensor), Alarm.objects.get(rule__sensor=other)


def test_rule_crud(alpha_api, sensor):
    body = {
        "sensor": sensor.id,
        "condition": "hihi",
        "limit": 110,
        "deadband": 2,
        "on_delay": 5,
        "priority": "critical",
        "rationale": "Boiler trips at 115 °C; reduce firing rate.",
    }

    created = alpha_api.post("/api/v1/alarm-rules/", body, format="json")
    changed = alpha_api.patch(f"/api/v1/alarm-rules/{created.data['id']}/", {"limit": 112}, format="json")
    listed = alpha_api.get("/api/v1/alarm-rules/", {"sensor": sensor.id})
    deleted = alpha_api.delete(f"/api/v1/alarm-rules/{created.data['id']}/")

    assert created.status_code == 201
    assert created.data["rationale"].startswith("Boiler trips")
    assert changed.data["limit"] == 112
    assert [rule["condition"] for rule in listed.data["results"]] == ["hihi"]
    assert deleted.status_code == 204
    assert AlarmRule.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"condition": "hi"}, "limit"),
        ({"condition": "stale"}, "stale_after"),
        ({"condition": "digital"}, "alarm_state_value"),
        ({"condition": "hi", "limit": 100, "deadband": -1}, "deadband"),
        ({"condition": "hi", "limit": 100, "on_delay": -5}, "on_delay"),
        ({"condition": "rate", "limit": 100}, "condition"),
    ],
)
def test_invalid_rule_names_field(alpha_api, sensor, body, field):
    response = alpha_api.post("/api/v1/alarm-rules/", {"sensor": sensor.id, **body}, format="json")

    assert response.status_code == 400
    assert field in response.data


def test_rule_patch_is_checked_against_stored_values(alpha_api, make_rule):
    rule = make_rule(condition="hi", limit=100.0)

    response = alpha_api.patch(f"/api/v1/alarm-rules/{rule.id}/", {"condition": "stale"}, format="json")

    assert response.status_code == 400
    assert "stale_after" in response.data


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, {"high", "low"}),
        ({"active": "true"}, {"high"}),
        ({"active": "false"}, {"low"}),
        ({"unacknowledged": "true"}, {"high", "low"}),
        ({"priority": "low"}, {"low"}),
        ({"priority": ["low", "high"]}, {"high", "low"}),
    ],
)
def test_alarm_list_filters(alpha_api, alarms, query, expected):
    response = alpha_api.get("/api/v1/alarms/", query)

    assert response.status_code == 200
    assert {alarm["priority"] for alarm in response.data["results"]} == expected


def test_alarm_list_filters_by_unit(alpha_api, alarms):
    high, low = alarms

    response = alpha_api.get("/api/v1/alarms/", {"unit": low.unit_id})

    assert [alarm["id"] for alarm in response.data["results"]] == [low.pk]


def test_alarm_list_query_count_does_not_grow(alpha_api, alarms, feed):
    # The first request of a token records its client network once; measure the steady state.
    alpha_api.get("/api/v1/alarms/")
    with CaptureQueriesContext(connection) as two_alarms:
        alpha_api.get("/api/v1/alarms/")
    for limit in (20.0, 30.0, 40.0):
        sensor = SensorFactory(minimum=0, maximum=200)
        AlarmRule.objects.create(sensor=sensor, condition="hi", limit=limit)
        feed(sensor, (at(0), 50.0))

    with CaptureQueriesContext(connection) as five_alarms:
        response = alpha_api.get("/api/v1/alarms/")

    assert len(response.data["results"]) == 5
    assert len(five_alarms) == len(two_alarms)


def test_acknowledge_over_api(alpha_api, alarms):
    high, _low = alarms

    response = alpha_api.post(f"/api/v1/alarms/{high.pk}/acknowledge/", {"comment": "On it"}, format="json")
    again = alpha_api.post(f"/api/v1/alarms/{high.pk}/acknowledge/", {}, format="json")
    detail = alpha_api.get(f"/api/v1/alarms/{high.pk}/")

    assert response.status_code == 200
    assert response.data["state"] == AlarmState.ACTIVE_ACKNOWLEDGED
    assert response.data["acknowledged_by"] == "admin"
    assert again.status_code == 409
    assert "already acknowledged by admin" in again.data["detail"]
    assert [step["action"] for step in detail.data["transitions"]] == [
        TransitionAction.ACTIVATE,
        TransitionAction.ACKNOWLEDGE,
    ]
    assert detail.data["transitions"][1]["comment"] == "On it"


def test_shelve_and_unshelve_over_api(alpha_api, alarms):
    high, _low = alarms

    shelved = alpha_api.post(
        f"/api/v1/alarms/{high.pk}/shelve/", {"comment": "Known fault", "minutes": 30}, format="json"
    )
    unshelved = alpha_api.post(f"/api/v1/alarms/{high.pk}/unshelve/", {"comment": "Fixed"}, format="json")

    assert shelved.status_code == 200
    assert shelved.data["state"] == AlarmState.SHELVED
    assert shelved.data["shelve_reason"] == "Known fault"
    assert shelved.data["shelved_by"] == "admin"
    assert unshelved.status_code == 200
    assert unshelved.data["state"] == AlarmState.ACTIVE_UNACKNOWLEDGED


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"minutes": 30}, "comment"),
        ({"comment": "Known fault"}, "non_field_errors"),
        ({"comment": "Known fault", "minutes": 30, "until": "2026-12-31T00:00:00Z"}, "non_field_errors"),
        ({"comment": "Known fault", "minutes": 2000}, "minutes"),
    ],
)
def test_invalid_shelve_request_names_field(alpha_api, alarms, body, field):
    high, _low = alarms

    response = alpha_api.post(f"/api/v1/alarms/{high.pk}/shelve/", body, format="json")

    assert response.status_code == 400
    assert field in response.data
    assert Alarm.objects.get(pk=high.pk).state == AlarmState.ACTIVE_UNACKNOWLEDGED


def test_shelve_until_in_past_is_conflict(alpha_api, alarms):
    high, _low = alarms
    past = (timezone.now() - timedelta(minutes=1)).isoformat()

    response = alpha_api.post(f"/api/v1/alarms/{high.pk}/shelve/", {"comment": "x", "until": past}, format="json")

    assert response.status_code == 409
    assert "not in the future" in response.data["detail"]


def test_acknowledge_without_permission_is_denied(alpha, alarms):
    high, _low = alarms
    viewer = get_user_model().objects.create_user("viewer", password="Viewer-pass-4711")
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', viewer)}")

    response = client.post(f"/api/v1/alarms/{high.pk}/acknowledge/", {}, format="json")

    assert response.status_code == 403
    assert Alarm.objects.get(pk=high.pk).state == AlarmState.ACTIVE_UNACKNOWLEDGED


def test_alarms_cannot_be_created_or_deleted_over_api(alpha_api, alarms):
    high, _low = alarms

    created = alpha_api.post("/api/v1/alarms/", {}, format="json")
    deleted = alpha_api.delete(f"/api/v1/alarms/{high.pk}/")

    # The permission check may reject the request before the method check runs.
    assert created.status_code in (403, 405)
    assert deleted.status_code in (403, 405)
    assert Alarm.objects.count() == 2


def client_with_role(role):
    user = get_user_model().objects.create_user(f"{role}-user", password="Role-pass-4711", role=role)
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', user)}")
    return client


def test_operator_role_may_acknowledge_and_shelve(alpha, alarms):
    high, low = alarms
    operator = client_with_role("operator")

    acknowledged = operator.post(f"/api/v1/alarms/{high.pk}/acknowledge/", {}, format="json")
    shelved = operator.post(f"/api/v1/alarms/{low.pk}/shelve/", {"comment": "Sensor fault", "minutes": 30}, format="json")

    assert acknowledged.status_code == 200
    assert shelved.status_code == 200
    assert Alarm.objects.get(pk=low.pk).state == AlarmState.SHELVED


def test_viewer_role_may_not_shelve(alpha, alarms):
    high, _low = alarms

    response = client_with_role("viewer").post(
        f"/api/v1/alarms/{high.pk}/shelve/", {"comment": "x", "minutes": 30}, format="json"
    )

    assert response.status_code == 403
    assert "shelve" in response.data["detail"]


def test_rule_out_of_service_and_back_over_api(alpha_api, alarms):
    high, _low = alarms
    rule_url = f"/api/v1/alarm-rules/{high.rule_id}"

    removed = alpha_api.post(f"{rule_url}/remove-from-service/", {"comment": "Transmitter broken"}, format="json")
    again = alpha_api.post(f"{rule_url}/remove-from-service/", {"comment": "Twice"}, format="json")
    high.refresh_from_db()
    state_while_out = high.state
    returned = alpha_api.post(f"{rule_url}/return-to-service/", {"comment": "Replaced"}, format="json")

    high.refresh_from_db()
    assert removed.status_code == 200
    assert removed.data["in_service"] is False
    assert again.status_code == 409
    assert "already out of service" in again.data["detail"]
    assert state_while_out == AlarmState.OUT_OF_SERVICE
    assert returned.status_code == 200
    assert returned.data["in_service"] is True
    assert high.state == AlarmState.NORMAL
    assert [t.action for t in high.transitions.all()][-2:] == [
        TransitionAction.REMOVE_FROM_SERVICE,
        TransitionAction.RETURN_TO_SERVICE,
    ]


def test_out_of_service_needs_reason(alpha_api, alarms):
    high, _low = alarms

    response = alpha_api.post(f"/api/v1/alarm-rules/{high.rule_id}/remove-from-service/", {}, format="json")

    assert response.status_code == 400
    assert "comment" in response.data


def test_operator_may_not_take_rule_out_of_service(alpha, alarms):
    high, _low = alarms

    response = client_with_role("operator").post(
        f"/api/v1/alarm-rules/{high.rule_id}/remove-from-service/", {"comment": "x"}, format="json"
    )

    assert response.status_code == 403
    assert AlarmRule.objects.get(pk=high.rule_id).in_service is True


def test_kpis_include_fleeting_over_api(alpha_api, alarms):
    response = alpha_api.get("/api/v1/alarms/kpis/", {"fleeting_seconds": 2})

    assert response.status_code == 200
    assert response.data["fleeting"] == 0
    assert response.data["fleeting_rule_ids"] == []


def test_webhook_target_secret_shown_only_on_create(alpha_api):
    created = alpha_api.post(
        "/api/v1/alarm-notification-targets/",
        {"name": "Pager", "kind": "webhook", "url": "http://127.0.0.1:9/hook", "min_priority": "critical"},
        format="json",
    )
    fetched = alpha_api.get(f"/api/v1/alarm-notification-targets/{created.data['id']}/")
    rotated = alpha_api.post(f"/api/v1/alarm-notification-targets/{created.data['id']}/rotate-secret/")

    assert created.status_code == 201
    assert len(created.data["secret"]) >= 40
    assert "secret" not in fetched.data
    assert "secret_encrypted" not in fetched.data
    assert rotated.data["secret"] != created.data["secret"]


def test_invalid_target_names_field(alpha_api):
    response = alpha_api.post(
        "/api/v1/alarm-notification-targets/",
        {"name": "Escalation", "kind": "email", "email": "a@example.com", "purpose": "escalation"},
        format="json",
    )

    assert response.status_code == 400
    assert "escalate_after" in response.data


def test_rule_api_accepts_deviation_rule(alpha_api, sensor):
    setpoint = SensorFactory(unit=sensor.unit)

    response = alpha_api.post(
        "/api/v1/alarm-rules/",
        {"sensor": sensor.pk, "condition": "deviation", "setpoint_sensor": setpoint.pk, "band": 3.0},
        format="json",
    )
    missing = alpha_api.post(
        "/api/v1/alarm-rules/", {"sensor": sensor.pk, "condition": "roc", "limit": 2.0}, format="json"
    )

    assert response.status_code == 201
    assert response.data["setpoint_sensor"] == setpoint.pk
    assert missing.status_code == 400
    assert "rate_window" in missing.data
