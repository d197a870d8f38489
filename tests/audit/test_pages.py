"""The audit page lists, filters and pages entries and links exports pinned to the chain head."""

from django.contrib.auth import get_user_model
from django.test import Client

from apps.audit.choices import AuditAction
from apps.audit.pages import PAGE_SIZE
from apps.audit.services import Actor, record
from tests.audit.conftest import chain_head
from tests.conftest import TENANT_DOMAINS, admin_of


def test_page_lists_entries_with_changes(alpha_client):
    record(AuditAction.OBJECT_UPDATED, actor=admin_of("alpha"), changes={"status": ["in_service", "maintenance"]})

    response = alpha_client.get("/audit/")

    html = response.content.decode()
    assert response.status_code == 200
    assert "Object updated" in html
    assert "<td>status</td><td>in_service</td><td>maintenance</td>" in html
    assert 'id="audit-results"' in html


def test_htmx_request_gets_table_only(alpha_client):
    record(AuditAction.LOGOUT, actor=admin_of("alpha"))

    response = alpha_client.get("/audit/?action=auth.logout", HTTP_HX_REQUEST="true")

    html = response.content.decode()
    assert "<table class=\"audit-entries\">" in html
    assert "<html" not in html
    assert "Logout" in html


def test_filter_hides_other_actions(alpha_client):
    record(AuditAction.LOGOUT, actor=admin_of("alpha"))
    record(AuditAction.TENANT_LIFECYCLE, actor=Actor.system_job("partitions"))

    response = alpha_client.get("/audit/?action=tenant.lifecycle", HTTP_HX_REQUEST="true")

    html = response.content.decode()
    assert "Tenant lifecycle event" in html
    assert "<td>Logout</td>" not in html


def test_invalid_filter_is_named(alpha_client):
    response = alpha_client.get("/audit/?since=yesterday", HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    assert "since:" in response.content.decode()


def test_older_entries_link_pages_by_sequence(alpha_client):
    job = Actor.system_job("bulk")
    for number in range(PAGE_SIZE + 3):
        record(AuditAction.TENANT_LIFECYCLE, actor=job, detail={"number": number})
    head = chain_head()

    first = alpha_client.get("/audit/?action=tenant.lifecycle", HTTP_HX_REQUEST="true").content.decode()
    oldest_shown = head - PAGE_SIZE + 1
    second = alpha_client.get(f"/audit/?action=tenant.lifecycle&before={oldest_shown}", HTTP_HX_REQUEST="true")

    assert f"before={oldest_shown}" in first
    assert f'id="entry-{oldest_shown - 1}"' in second.content.decode()
    assert f'id="entry-{oldest_shown}"' not in second.content.decode()


def test_export_links_pin_chain_head(alpha_client):
    record(AuditAction.LOGOUT, actor=admin_of("alpha"))
    head = chain_head()

    html = alpha_client.get("/audit/?action=auth.logout").content.decode()

    assert f"/api/v1/audit/export/?format=csv&amp;action=auth.logout&amp;through={head}" in html
    assert f"/api/v1/audit/export/manifest/?format=csv&amp;action=auth.logout&amp;through={head}" in html


def test_export_link_works_with_session(alpha_client):
    record(AuditAction.LOGOUT, actor=admin_of("alpha"))

    response = alpha_client.get(f"/api/v1/audit/export/?format=csv&action=auth.logout&through={chain_head()}")

    assert response.status_code == 200
    assert b"auth.logout" in b"".join(response.streaming_content)


def test_page_requires_permission(alpha):
    user = get_user_model().objects.create_user(username="viewer2", password="Viewer-pass-4712")
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(user)

    response = client.get("/audit/")

    assert response.status_code == 403


def test_anonymous_visitor_is_sent_to_login(alpha):
    response = Client(HTTP_HOST=TENANT_DOMAINS["alpha"]).get("/audit/")

    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_invalid_before_is_named(alpha_client):
    response = alpha_client.get("/audit/?before=abc", HTTP_HX_REQUEST="true")

    assert "before: &#x27;abc&#x27; is not an entry sequence" in response.content.decode()
