"""List endpoints reject unknown query parameters and invalid page sizes, pages and cursors with 400."""

import pytest

from tests.factories import SensorFactory, SiteFactory


def _list_paths():
    """Return the paths of the router's list endpoints, which take no object id."""
    from apps.api.urls import router

    return sorted(f"/api/v1/{prefix}/" for prefix, _viewset, _basename in router.registry)


LIST_PATHS = _list_paths()


def test_list_paths_found():
    assert "/api/v1/sites/" in LIST_PATHS
    assert "/api/v1/alarms/" in LIST_PATHS
    assert len(LIST_PATHS) >= 9


@pytest.mark.parametrize("path", LIST_PATHS)
def test_list_rejects_unknown_parameter(alpha_api, path):
    response = alpha_api.get(path, {"since": "abc", "page_size": "10"})

    assert response.status_code == 400, response.content[:300]
    assert list(response.data) == ["since"]
    assert "Unknown parameter" in str(response.data["since"])


@pytest.mark.parametrize("path", LIST_PATHS)
@pytest.mark.parametrize("page_size", ["abc", "0", "-5"])
def test_list_rejects_invalid_page_size(alpha_api, path, page_size):
    response = alpha_api.get(path, {"page_size": page_size})

    assert response.status_code == 400, response.content[:300]
    assert "page_size" in response.data


def test_list_rejects_invalid_page(alpha_api):
    response = alpha_api.get("/api/v1/sites/", {"page": "abc"})

    assert response.status_code == 400
    assert "page" in response.data


def test_list_keeps_known_parameters(alpha_api):
    SiteFactory()

    response = alpha_api.get("/api/v1/sites/", {"page": "1", "page_size": "1", "format": "json"})

    assert response.status_code == 200
    assert len(response.data["results"]) == 1


def test_list_keeps_filter_parameters(alpha_api):
    response = alpha_api.get("/api/v1/alarm-rules/", {"enabled": "true"})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"since": "abc"}, "since"),
        ({"page_size": "abc"}, "page_size"),
        ({"cursor": "\x00"}, "cursor"),
        ({"cursor": "not-base64!"}, "cursor"),
        ({"start": "2026-01-05T10:00:00Z", "until": "2026-01-05T11:00:00Z"}, "until"),
    ],
)
def test_readings_reject_invalid_parameters(alpha_api, query, named):
    sensor = SensorFactory()

    response = alpha_api.get(f"/api/v1/sensors/{sensor.id}/readings/", query)

    assert response.status_code == 400, response.content[:300]
    assert named in response.data


def test_readings_keep_known_parameters(alpha_api):
    sensor = SensorFactory()

    response = alpha_api.get(
        f"/api/v1/sensors/{sensor.id}/readings/",
        {"start": "2026-01-05T10:00:00Z", "end": "2026-01-05T11:00:00Z", "page_size": "5"},
    )

    assert response.status_code == 200


def test_audit_list_rejects_invalid_cursor_and_page_size(alpha_api):
    cursor = alpha_api.get("/api/v1/audit/entries/", {"cursor": "\x00"})
    page_size = alpha_api.get("/api/v1/audit/entries/", {"page_size": "abc"})

    assert cursor.status_code == 400
    assert "cursor" in cursor.data
    assert page_size.status_code == 400
    assert "page_size" in page_size.data
