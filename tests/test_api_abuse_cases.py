"""Paging requests that try to make the API read too much."""

import time

from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.api.pagination import PageNumberPagination
from apps.units.models import Site, Unit

MAX_PAGE_SIZE = PageNumberPagination.max_page_size


def _create_units(count):
    site = Site.objects.create(name="Site A")
    Unit.objects.bulk_create(Unit(site=site, name=f"Boiler {number}", kind="boiler") for number in range(count))


def test_huge_page_size_is_rejected(alpha_api):
    response = alpha_api.get("/api/v1/units/", {"page_size": 1000000})

    assert response.status_code == 400
    assert "page_size" in str(response.data)
    assert str(MAX_PAGE_SIZE) in str(response.data)


def test_maximum_page_size_is_served(alpha_api):
    _create_units(MAX_PAGE_SIZE + 1)

    response = alpha_api.get("/api/v1/units/", {"page_size": MAX_PAGE_SIZE})

    assert response.status_code == 200
    assert len(response.data["results"]) == MAX_PAGE_SIZE
    assert response.data["count"] == MAX_PAGE_SIZE + 1
    assert response.data["next"] is not None


def test_far_page_is_not_found_without_reading_rows(alpha_api):
    _create_units(3)

    started = time.monotonic()
    with CaptureQueriesContext(connection) as queries:
        response = alpha_api.get("/api/v1/units/", {"page": 999999})
    elapsed = time.monotonic() - started

    unit_selects = [query["sql"] for query in queries if 'FROM "units_unit"' in query["sql"]]
    assert response.status_code == 404
    assert len(unit_selects) == 1
    assert "COUNT(" in unit_selects[0]
    assert elapsed < 1.0


def test_non_numeric_page_is_rejected(alpha_api):
    response = alpha_api.get("/api/v1/units/", {"page": "last-but-one"})

    assert response.status_code == 400
    assert "page" in str(response.data)
    assert "last-but-one" in str(response.data)
