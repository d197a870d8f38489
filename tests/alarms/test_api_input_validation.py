"""Alarm API endpoints reject hostile or malformed input with 400 naming the parameter or field."""

import pytest

from apps.alarms.models import AlarmRule

from .conftest import at
from .test_api import alarms  # noqa: F401 (fixture)

KPIS = "/api/v1/alarms/kpis/"


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"start": "0001-01-01T00:00:00Z"}, "start"),
        ({"start": "0001-01-01T00:00:00+01:00"}, "start"),
        ({"end": "9999-12-31T23:59:59Z"}, "end"),
        ({"start": "1900-01-01T00:00:00Z", "end": "9999-12-31T23:59:59Z"}, "start"),
        ({"start": "2020-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "start"),
        ({"start": "9998-12-31T00:00:00Z", "end": "9998-12-31T23:59:59Z", "fleeting_seconds": "1e308"},
         "fleeting_seconds"),
        ({"fleeting_seconds": "1e308"}, "fleeting_seconds"),
        ({"fleeting_seconds": "nan"}, "fleeting_seconds"),
        ({"fleeting_seconds": "inf"}, "fleeting_seconds"),
        ({"fleeting_seconds": "3600.5"}, "fleeting_seconds"),
        ({"start": "2026-01-05T10:00:00"}, "start"),
        ({"start": "2026-01-05T09:00:00Z", "end": "2026-01-05T10:00:00"}, "end"),
        ({"bogus": "1"}, "bogus"),
    ],
)
def test_kpis_reject_invalid_query(alpha_api, query, named):
    response = alpha_api.get(KPIS, query)

    assert response.status_code == 400, response.content[:300]
    assert named in response.data


def test_kpis_no_offset_message_names_fix(alpha_api):
    response = alpha_api.get(KPIS, {"start": "2026-01-05T10:00:00"})

    assert "no UTC offset" in str(response.data["start"])


def test_kpis_accept_longest_window(alpha_api, alarms):  # noqa: F811
    query = {"start": "2025-01-05T10:00:00Z", "end": "2026-01-06T10:00:00Z", "fleeting_seconds": "3600"}

    response = alpha_api.get(KPIS, query)

    assert response.status_code == 200, response.content[:300]
    assert response.data["annunciated"] == 2


def test_kpis_accept_format_parameter(alpha_api):
    response = alpha_api.get(KPIS, {"format": "json"})

    assert response.status_code == 200


def test_shelve_until_without_offset_rejected(alpha_api, alarms):  # noqa: F811
    high, _low = alarms
    until = at(3600).replace(tzinfo=None).isoformat()

    response = alpha_api.post(
        f"/api/v1/alarms/{high.pk}/shelve/", {"comment": "Known fault", "until": until}, format="json"
    )

    assert response.status_code == 400
    assert "no UTC offset" in str(response.data["until"])
    high.refresh_from_db()
    assert high.shelved_until is None


def test_rule_create_rejects_unknown_field(alpha_api, sensor):
    body = {"sensor": sensor.id, "condition": "hi", "limit": 110, "priority": "high", "name": "Boiler high"}

    response = alpha_api.post("/api/v1/alarm-rules/", body, format="json")

    assert response.status_code == 400
    assert list(response.data) == ["name"]
    assert "Unknown field" in str(response.data["name"])
    assert AlarmRule.objects.count() == 0


def test_rule_update_rejects_unknown_field(alpha_api, make_rule):
    rule = make_rule(limit=100.0)

    response = alpha_api.patch(f"/api/v1/alarm-rules/{rule.pk}/", {"limit": 90, "limt": 80}, format="json")

    assert response.status_code == 400
    assert "limt" in response.data
    rule.refresh_from_db()
    assert rule.limit == 100.0


def test_rule_update_rejects_read_only_field(alpha_api, make_rule):
    rule = make_rule(limit=100.0)

    response = alpha_api.patch(f"/api/v1/alarm-rules/{rule.pk}/", {"limit": 95, "in_service": False}, format="json")

    assert response.status_code == 400
    assert list(response.data) == ["in_service"]
    assert "read-only" in str(response.data["in_service"])
    rule.refresh_from_db()
    assert rule.in_service is True
    assert rule.limit == 100.0


@pytest.mark.parametrize("action", ["acknowledge", "shelve", "unshelve"])
def test_alarm_actions_reject_unknown_field(alpha_api, alarms, action):  # noqa: F811
    high, _low = alarms

    response = alpha_api.post(
        f"/api/v1/alarms/{high.pk}/{action}/", {"comment": "x", "minutes": 5, "reason": "x"}, format="json"
    )

    assert response.status_code == 400
    assert "reason" in response.data


def test_notification_target_rejects_unknown_field(alpha_api):
    body = {"name": "Pager", "kind": "email", "email": "ops@example.com", "min_priority": "high", "secret": "x"}

    response = alpha_api.post("/api/v1/alarm-notification-targets/", body, format="json")

    assert response.status_code == 400
    assert "secret" in response.data


@pytest.mark.parametrize(
    "until",
    ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2026-13-01T00:00:00Z", "", "soon"],
)
def test_shelve_rejects_invalid_until(alpha_api, alarms, until):  # noqa: F811
    high, _low = alarms

    response = alpha_api.post(
        f"/api/v1/alarms/{high.pk}/shelve/", {"comment": "Known fault", "until": until}, format="json"
    )

    assert response.status_code == 400, response.content[:300]
    high.refresh_from_db()
    assert high.shelved_until is None


@pytest.mark.parametrize("end", ["9999-12-31T23:59:59-01:00", "9998-12-31T23:59:59-01:00"])
def test_kpis_reject_end_near_maximum(alpha_api, end):
    response = alpha_api.get(KPIS, {"start": "2026-01-05T10:00:00Z", "end": end})

    assert response.status_code == 400, response.content[:300]
    assert list(response.data) == ["end"]
