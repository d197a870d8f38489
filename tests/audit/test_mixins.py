"""Creates, updates and deletes through the REST API and the tenant admin write audit entries."""

import uuid

import pytest

from apps.audit.choices import ActorType, AuditAction
from apps.units.models import Site, Unit
from tests.audit.conftest import entries_after
from tests.conftest import admin_of
from tests.factories import SiteFactory, UnitFactory

CLIENT_ADDRESS = "198.51.100.7"


def test_api_create_records_entry_with_request_context(alpha_api, head):
    request_id = str(uuid.uuid4())

    response = alpha_api.post(
        "/api/v1/sites/", {"name": "North", "address": "1 Plant Road"}, format="json",
        HTTP_X_REQUEST_ID=request_id, HTTP_USER_AGENT="pytest-agent/1.0", REMOTE_ADDR=CLIENT_ADDRESS,
    )

    [entry] = entries_after(head)
    assert response.status_code == 201
    assert entry.action == AuditAction.OBJECT_CREATED
    assert (entry.object_type, entry.object_id, entry.object_repr) == ("units.site", str(response.data["id"]), "North")
    assert entry.changes["name"] == [None, "North"]
    assert entry.changes["address"] == [None, "1 Plant Road"]
    assert (entry.actor_type, entry.actor_name) == (ActorType.USER, "admin")
    assert entry.actor_id == str(admin_of("alpha").pk)
    assert entry.request_id == request_id
    assert response["X-Request-ID"] == request_id
    assert entry.source_ip == CLIENT_ADDRESS
    assert entry.user_agent == "pytest-agent/1.0"


def test_api_update_records_changed_fields_only(alpha_api, head):
    unit = UnitFactory(name="Boiler 1", status="in_service")

    response = alpha_api.patch(f"/api/v1/units/{unit.pk}/", {"status": "maintenance"}, format="json")

    [entry] = entries_after(head)
    assert response.status_code == 200
    assert entry.action == AuditAction.OBJECT_UPDATED
    assert entry.object_id == str(unit.pk)
    assert entry.changes == {"status": ["in_service", "maintenance"]}


def test_api_delete_records_values_before(alpha_api, head):
    site = SiteFactory(name="Old site", address="Gone street")

    response = alpha_api.delete(f"/api/v1/sites/{site.pk}/")

    [entry] = entries_after(head)
    assert response.status_code == 204
    assert entry.action == AuditAction.OBJECT_DELETED
    assert (entry.object_id, entry.object_repr) == (str(site.pk), "Old site")
    assert entry.changes["address"] == ["Gone street", None]


def test_rejected_api_request_records_nothing(alpha_api, head):
    response = alpha_api.post("/api/v1/units/", {"name": "X", "kind": "reactor"}, format="json")

    assert response.status_code == 400
    assert entries_after(head) == []


def test_failed_audit_write_rolls_api_change_back(alpha_api, head, monkeypatch):
    def failing_hash(values):
        raise RuntimeError("audit storage failed")

    monkeypatch.setattr("apps.audit.services.entry_hash", failing_hash)

    with pytest.raises(RuntimeError, match="audit storage failed"):
        alpha_api.post("/api/v1/sites/", {"name": "Unaudited"}, format="json")

    assert not Site.objects.filter(name="Unaudited").exists()
    assert entries_after(head) == []


def test_forwarded_for_header_is_not_trusted_by_default(alpha_api, head):
    alpha_api.post(
        "/api/v1/sites/", {"name": "Spoofed"}, format="json",
        HTTP_X_FORWARDED_FOR="203.0.113.99", REMOTE_ADDR=CLIENT_ADDRESS,
    )

    [entry] = entries_after(head)
    assert entry.source_ip == CLIENT_ADDRESS


def test_invalid_request_id_is_replaced(alpha_api, head):
    response = alpha_api.post("/api/v1/sites/", {"name": "East"}, format="json", HTTP_X_REQUEST_ID="<script>")

    [entry] = entries_after(head)
    assert entry.request_id != "<script>"
    assert uuid.UUID(entry.request_id)
    assert response["X-Request-ID"] == entry.request_id


def inline_management(prefix, total, initial):
    return {
        f"{prefix}-TOTAL_FORMS": str(total), f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1000",
    }


def site_form(site_name, units=(), extra_units=()):
    """Return POST data of the site admin form with its unit inline rows."""
    data = {"name": site_name, "address": "", "time_zone": "UTC", "latitude": "", "longitude": ""}
    rows = list(units) + list(extra_units)
    data.update(inline_management("units", len(rows), len(units)))
    for index, row in enumerate(rows):
        for field, value in row.items():
            data[f"units-{index}-{field}"] = value
    return data


def test_admin_add_records_entry(alpha_client, head):
    response = alpha_client.post("/admin/units/site/add/", site_form("Admin site"))

    [entry] = entries_after(head)
    assert response.status_code == 302
    assert entry.action == AuditAction.OBJECT_CREATED
    assert entry.object_repr == "Admin site"
    assert entry.actor_name == "admin"


def test_admin_change_records_object_and_inline_changes(alpha_client, head):
    site = SiteFactory(name="Plant A")
    unit = UnitFactory(site=site, name="Boiler 1", kind="boiler", status="in_service")
    row = {"id": str(unit.pk), "site": str(site.pk), "name": "Boiler 1", "kind": "boiler", "status": "maintenance",
           "serial_number": ""}

    response = alpha_client.post(f"/admin/units/site/{site.pk}/change/", site_form("Plant B", units=[row]))

    site_entry, unit_entry = entries_after(head)
    assert response.status_code == 302
    assert (site_entry.action, site_entry.object_type) == (AuditAction.OBJECT_UPDATED, "units.site")
    assert site_entry.changes == {"name": ["Plant A", "Plant B"]}
    assert (unit_entry.action, unit_entry.object_type) == (AuditAction.OBJECT_UPDATED, "units.unit")
    assert unit_entry.changes == {"status": ["in_service", "maintenance"]}


def test_admin_inline_add_and_delete_record_entries(alpha_client, head):
    site = SiteFactory(name="Plant C")
    doomed = UnitFactory(site=site, name="Old boiler", kind="boiler")
    removed = {"id": str(doomed.pk), "site": str(site.pk), "name": "Old boiler", "kind": "boiler",
            "status": "in_service", "serial_number": "", "DELETE": "on"}
    added = {"site": str(site.pk), "name": "New chiller", "kind": "chiller", "status": "in_service",
             "serial_number": ""}

    response = alpha_client.post(f"/admin/units/site/{site.pk}/change/", site_form("Plant C", [removed], [added]))

    actions = [(entry.action, entry.object_repr) for entry in entries_after(head)]
    assert response.status_code == 302
    assert (AuditAction.OBJECT_CREATED, "Plant C / New chiller") in actions
    assert (AuditAction.OBJECT_DELETED, "Plant C / Old boiler") in actions
    assert not Unit.objects.filter(pk=doomed.pk).exists()


def test_admin_delete_records_entry(alpha_client, head):
    site = SiteFactory(name="Delete me")

    response = alpha_client.post(f"/admin/units/site/{site.pk}/delete/", {"post": "yes"})

    [entry] = entries_after(head)
    assert response.status_code == 302
    assert (entry.action, entry.object_id) == (AuditAction.OBJECT_DELETED, str(site.pk))


def test_admin_bulk_delete_records_entry_per_object(alpha_client, head):
    sites = [SiteFactory(), SiteFactory()]

    response = alpha_client.post(
        "/admin/units/site/",
        {"action": "delete_selected", "_selected_action": [str(site.pk) for site in sites], "post": "yes"},
    )

    entries = entries_after(head)
    assert response.status_code == 302
    assert sorted(entry.object_id for entry in entries) == sorted(str(site.pk) for site in sites)
    assert {entry.action for entry in entries} == {AuditAction.OBJECT_DELETED}
