"""JSON endpoints return 400 naming the problem for bodies that fail to parse, including too deep nesting."""

import pytest
from rest_framework.test import APIClient

from apps.api.parsers import MAX_JSON_DEPTH, json_depth
from tests.conftest import TENANT_DOMAINS
from tests.factories import DeviceFactory, SensorFactory

DEEP = "[" * 5000 + "]" * 5000
# Parses without RecursionError but exceeds the depth limit.
NESTED_BEYOND_LIMIT = '{"readings": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}"


def json_post(client, path, body):
    return client.generic("POST", path, body, content_type="application/json")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (DEEP, "nested too deeply"),
        (NESTED_BEYOND_LIMIT, f"more than {MAX_JSON_DEPTH} levels"),
        ('{"readings": [', "JSON parse error"),
        ('{"readings": [NaN]}', "JSON parse error"),
        (b'{"readings": "\xff"}', "JSON parse error"),
    ],
)
def test_ingest_rejects_unparsable_body(alpha_api, body, message):
    response = json_post(alpha_api, "/api/v1/ingest/", body)

    assert response.status_code == 400, response.content[:300]
    assert message in response.data["detail"]


def test_ingest_accepts_body_at_depth_limit(alpha_api):
    sensor = SensorFactory()
    nested = "[" * (MAX_JSON_DEPTH - 3) + "]" * (MAX_JSON_DEPTH - 3)
    body = f'{{"readings": [{{"sensor": {sensor.pk}, "time": "2026-01-05T10:00:00Z", "value": {nested}}}]}}'

    response = json_post(alpha_api, "/api/v1/ingest/", body)

    assert response.status_code == 200, response.content[:300]
    assert response.data["rejected"] == 1
    assert "is not a number" in response.data["rejections"][0]["reason"]


@pytest.mark.parametrize(
    "path",
    ["/api/v1/alarm-rules/", "/api/v1/sites/", "/api/v1/alarm-notification-targets/", "device-profile"],
)
def test_json_endpoints_reject_deep_body(alpha_api, path):
    if path == "device-profile":
        path = f"/api/v1/devices/{DeviceFactory().pk}/profile/"

    response = json_post(alpha_api, path, DEEP)

    assert response.status_code == 400, response.content[:300]
    assert "nested too deeply" in response.data["detail"]


def test_token_endpoint_rejects_deep_body(alpha):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])

    response = json_post(client, "/api/v1/auth/token/", DEEP)

    assert response.status_code == 400, response.content[:300]
    assert "nested too deeply" in response.data["detail"]


@pytest.mark.parametrize(
    ("document", "depth"),
    [(1, 0), ([], 1), ({"a": [1, {"b": []}]}, 4), ([[[]], []], 3)],
)
def test_json_depth(document, depth):
    assert json_depth(document) == depth
