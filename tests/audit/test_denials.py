"""Permission denials of logged-in users are recorded; anonymous rejections are not."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.test import APIClient

from apps.audit.choices import AuditAction, Outcome
from apps.units.models import Site
from tests.audit.conftest import chain_head, entries_after
from tests.conftest import TENANT_DOMAINS, access_token_for


@pytest.fixture
def outsider(alpha):
    """A logged-in user of alpha without any permission."""
    return get_user_model().objects.create_user(username="outsider", password="Outsider-pass-4711")


def test_api_denial_is_recorded(outsider):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"], REMOTE_ADDR="192.0.2.20")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', outsider)}")
    start = chain_head()

    response = client.post("/api/v1/sites/", {"name": "Forbidden"}, format="json")

    [entry] = entries_after(start)
    assert response.status_code == 403
    assert (entry.action, entry.outcome) == (AuditAction.PERMISSION_DENIED, Outcome.DENIED)
    assert (entry.actor_name, entry.source_ip) == ("outsider", "192.0.2.20")
    assert entry.detail["method"] == "POST"
    assert entry.detail["path"] == "/api/v1/sites/"
    assert entry.detail["reason"]


def test_page_denial_is_recorded(outsider):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(outsider)
    start = chain_head()

    response = client.get("/audit/")

    [entry] = entries_after(start)
    assert response.status_code == 403
    assert entry.action == AuditAction.PERMISSION_DENIED
    assert entry.detail["path"] == "/audit/"


def test_anonymous_rejection_is_not_recorded(alpha):
    start = chain_head()

    response = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"]).post("/api/v1/sites/", {"name": "X"}, format="json")

    assert response.status_code == 401
    assert entries_after(start) == []


def test_htmx_action_denial_is_recorded(outsider):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"], REMOTE_ADDR="192.0.2.21")
    client.force_login(outsider)
    start = chain_head()

    response = client.post("/alarms/1/acknowledge/", HTTP_HX_REQUEST="true")

    assert response.status_code == 403
    [entry] = entries_after(start)
    assert (entry.action, entry.outcome, entry.actor_name) == (AuditAction.PERMISSION_DENIED, Outcome.DENIED, "outsider")
    assert entry.detail["path"] == "/alarms/1/acknowledge/"
    assert "acknowledge" in entry.detail["reason"]


def test_admin_denial_is_recorded(outsider):
    # Staff status lets the user into the admin; the role grants no model permission.
    outsider.is_staff = True
    outsider.save(update_fields=["is_staff"])
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(outsider)
    start = chain_head()

    response = client.post("/admin/units/site/add/", {"name": "Forbidden"})

    assert response.status_code == 403
    [entry] = entries_after(start)
    assert (entry.action, entry.outcome) == (AuditAction.PERMISSION_DENIED, Outcome.DENIED)
    assert entry.detail["path"] == "/admin/units/site/add/"
    assert not Site.objects.filter(name="Forbidden").exists()
