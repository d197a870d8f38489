"""Every write of the platform API and the platform admin writes exactly one matching record.

The platform operator acts on the public schema, which has no audit chain,
so each action on a tenant is recorded in that tenant's own chain
(`tenant.lifecycle`). Deleting a tenant drops its chain, so the deletion is
recorded in the public schema's lifecycle events instead. The endpoints and
pages come from the public URLconf and the platform admin's registry, so a
new one fails here until it has a case.
"""

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.forms.models import model_to_dict
from django.test import RequestFactory
from django.urls import get_resolver
from django_tenants.utils import schema_context, schema_exists
from rest_framework.test import APIClient

from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.tenants.admin import platform_admin_site
from apps.tenants.backup_models import TenantLifecycleEvent
from apps.tenants.jobs import run_provisioning_job
from apps.tenants.models import Domain, ProvisioningJob, Tenant
from apps.tenants.services import suspend_tenant
from tests.audit.test_admin_coverage import custom_admin_url_names
from tests.audit.test_api_coverage import iter_patterns, served_write_methods
from tests.tenants.test_admin import platform_client  # noqa: F401 (fixture used here)

PLATFORM_API_PREFIX = "api/platform/"
PLATFORM_ACTOR = "platform:platform"

# Platform endpoints that write no audit record, with the reason.
EXEMPT_ENDPOINTS = {
    ("platform-token-obtain-pair", "post"): "platform staff tokens live in the public schema, which has no audit "
    "chain; apps.tenants.platform_tokens logs their issue instead",
    ("platform-token-refresh", "post"): "logged by apps.tenants.platform_tokens, as token issue",
    ("platform-auth-logout", "post"): "logged by apps.tenants.platform_tokens, as token issue",
}

# Models of the platform admin that are not recorded, with the reason.
EXEMPT_ADMINS = {
    # TODO: changes to platform staff users are not recorded anywhere but in Django's admin log,
    # because the public schema has no audit chain.
    "accounts.user": "platform staff users live in the public schema, which has no audit chain",
}
EXEMPT_ADMIN_PAGES = {"auth_user_password_change": EXEMPT_ADMINS["accounts.user"]}


def platform_write_endpoints():
    """Return (url name, method) of every write endpoint under /api/platform/ of the public URLconf."""
    endpoints = set()
    for route, pattern in iter_patterns(get_resolver("thermacore.urls_public").url_patterns):
        if not route.startswith(PLATFORM_API_PREFIX) or "(?P<format>" in route:
            continue
        endpoints.update((pattern.name, method) for method in served_write_methods(pattern.callback))
    return endpoints


def chain_of(schema):
    with schema_context(schema):
        return list(AuditEntry.objects.order_by("sequence"))


def new_entries(schema, before):
    return [entry for entry in chain_of(schema) if entry.sequence > before]


def head_of(schema):
    entries = chain_of(schema)
    return entries[-1].sequence if entries else 0


def bare_tenant(schema):
    """A tenant row with an unmigrated schema of its own, cheap to create and to drop."""
    tenant = Tenant(schema_name=schema, name=schema.title())
    tenant.auto_create_schema = False
    tenant.save()
    Domain.objects.create(domain=f"{schema}.localhost", tenant=tenant, is_primary=True)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
    return tenant


@dataclass
class Lifecycle:
    """A request against tenant `schema` and the `tenant.lifecycle` event it must add to that tenant's chain."""

    method: str
    url: str
    data: dict
    status: int
    schema: str
    event: str


@dataclass
class PublicEvent:
    """A request that drops tenant `schema` and must add one public lifecycle event."""

    method: str
    url: str
    data: dict
    status: int
    schema: str
    event: str


NEW_TENANT = {
    "schema_name": "au_plat_new",
    "name": "Platform coverage",
    "domain": "au-plat-new.localhost",
    "admin_username": "admin",
    "admin_password": "Boiler-room-key-5519",
    "admin_email": "ops@plat.example",
    "time_zone": "UTC",
}

TENANTS = "/api/platform/v1/tenants/"

def resume_case():
    suspend_tenant(Tenant.objects.get(schema_name="alpha"), actor=_platform_user(), reason="Invoice overdue")
    return Lifecycle("post", f"{TENANTS}alpha/resume/", {}, 200, "alpha", "resumed")


def delete_case():
    bare_tenant("au_plat_del")
    return PublicEvent(
        "post", f"{TENANTS}au_plat_del/delete/", {"confirm": "au_plat_del", "skip_export": True}, 200,
        "au_plat_del", "deleted",
    )


API_CASES: dict[tuple[str, str], Callable] = {
    ("platform-tenant-list", "post"): lambda: Lifecycle(
        "post", TENANTS, NEW_TENANT, 202, NEW_TENANT["schema_name"], "provisioned"
    ),
    ("platform-tenant-detail", "patch"): lambda: Lifecycle(
        "patch", f"{TENANTS}alpha/", {"max_devices": 321}, 200, "alpha", "settings_changed"
    ),
    ("platform-tenant-suspend", "post"): lambda: Lifecycle(
        "post", f"{TENANTS}alpha/suspend/", {"reason": "Invoice overdue"}, 200, "alpha", "suspended"
    ),
    ("platform-tenant-resume", "post"): resume_case,
    ("platform-tenant-export", "post"): lambda: Lifecycle(
        "post", f"{TENANTS}alpha/export/", {}, 202, "alpha", "export_requested"
    ),
    ("platform-tenant-delete", "post"): delete_case,
}


def _platform_user():
    return get_user_model().objects.get(username="platform")


def test_platform_endpoints_have_cases():
    endpoints = platform_write_endpoints()

    assert ("platform-tenant-list", "post") in endpoints
    assert sorted(endpoints - set(API_CASES) - set(EXEMPT_ENDPOINTS)) == [], (
        "These platform endpoints have no audit case; add one to API_CASES."
    )
    assert sorted((set(API_CASES) | set(EXEMPT_ENDPOINTS)) - endpoints) == [], "These platform endpoints are gone."


def assert_one_record(expected, response_status, before):
    assert response_status == expected.status
    if isinstance(expected, PublicEvent):
        events = TenantLifecycleEvent.objects.filter(schema_name=expected.schema)
        assert [event.event for event in events] == [expected.event]
        assert events.get().actor == PLATFORM_ACTOR
        assert not schema_exists(expected.schema)
        return
    [entry] = new_entries(expected.schema, before)
    assert (entry.action, entry.detail["event"]) == (AuditAction.TENANT_LIFECYCLE, expected.event)
    assert (entry.object_type, entry.actor_name) == ("tenants.tenant", PLATFORM_ACTOR)


@pytest.mark.parametrize(("name", "method"), sorted(API_CASES), ids=[f"{m.upper()} {n}" for n, m in sorted(API_CASES)])
def test_platform_endpoint_writes_one_record(platform_client, name, method):
    client = APIClient(HTTP_HOST="platform.localhost")
    client.force_login(_platform_user())
    expected = API_CASES[(name, method)]()
    # A tenant still to be provisioned has no chain yet, and a tenant to be deleted needs none.
    before = head_of(expected.schema) if isinstance(expected, Lifecycle) and schema_exists(expected.schema) else 0

    response = getattr(client, expected.method)(expected.url, expected.data, format="json")
    if name == "platform-tenant-list":
        # The worker would run the job once the request commits.
        run_provisioning_job(ProvisioningJob.objects.get(pk=response.json()["id"]).pk)
    connection.set_schema_to_public()

    assert_one_record(expected, response.status_code, before)


# Platform admin ------------------------------------------------------------------------------------------------


def tenant_add_data():
    data = {
        name: ("" if value is None else value)
        for name, value in model_to_dict(Tenant(), exclude=["id", "status", "suspended_at", "suspension_reason"]).items()
        if not isinstance(value, bool | list)
    }
    data.update({
        "name": "Admin coverage", "schema_name": "au_plat_adm", "time_zone": "UTC",
        "domains-TOTAL_FORMS": "1", "domains-INITIAL_FORMS": "0",
        "domains-0-domain": "au-plat-adm.localhost", "domains-0-is_primary": "on",
    })
    return data


def tenant_change_data(tenant):
    data = tenant_add_data()
    data.update({"name": tenant.name, "schema_name": tenant.schema_name, "max_devices": 654})
    # The tenant's domains as the change form shows them, because a tenant must keep at least one.
    domains = list(tenant.domains.order_by("pk"))
    data.update({"domains-TOTAL_FORMS": str(len(domains)), "domains-INITIAL_FORMS": str(len(domains))})
    for index, domain in enumerate(domains):
        data.update({f"domains-{index}-id": domain.pk, f"domains-{index}-tenant": tenant.pk,
                     f"domains-{index}-domain": domain.domain})
        if domain.is_primary:
            data[f"domains-{index}-is_primary"] = "on"
    for name in ("max_sensors", "max_users", "api_rate_limit", "retention_days", "password_min_length",
                 "session_timeout_minutes", "time_zone"):
        value = getattr(tenant, name)
        data[name] = "" if value is None else value
    data["api_allowed_networks"] = ",".join(tenant.api_allowed_networks or [])
    return data


def admin_delete_case(_alpha):
    doomed = bare_tenant("au_plat_del")
    return PublicEvent(
        "post", f"/admin/tenants/tenant/{doomed.pk}/delete-tenant/", {"confirm": "au_plat_del", "skip_export": "on"},
        302, "au_plat_del", "deleted",
    )


ADMIN_PAGE_CASES = {
    "tenants_tenant_export": lambda alpha: Lifecycle(
        "post", f"/admin/tenants/tenant/{alpha.pk}/export/", {}, 302, "alpha", "export_requested"
    ),
    "tenants_tenant_delete_tenant": admin_delete_case,
}


def test_platform_admin_pages_have_cases():
    pages = set(custom_admin_url_names(platform_admin_site))

    assert sorted(pages - set(ADMIN_PAGE_CASES) - set(EXEMPT_ADMIN_PAGES)) == [], (
        "These platform admin pages have no audit case; add one to ADMIN_PAGE_CASES."
    )
    assert sorted((set(ADMIN_PAGE_CASES) | set(EXEMPT_ADMIN_PAGES)) - pages) == []


def test_platform_admin_models_are_covered(platform_client):
    request = RequestFactory().get("/admin/")
    request.user = _platform_user()
    writable = {
        model._meta.label_lower for model, model_admin in platform_admin_site._registry.items()
        if model_admin.has_add_permission(request) or model_admin.has_change_permission(request)
        or model_admin.has_delete_permission(request)
    }

    # Only the tenant admin writes, through the audited save_model; the rest is exempt with a reason.
    assert writable - set(EXEMPT_ADMINS) == {"tenants.tenant"}


@pytest.mark.parametrize("name", sorted(ADMIN_PAGE_CASES))
def test_platform_admin_page_writes_one_record(platform_client, name):
    expected = ADMIN_PAGE_CASES[name](Tenant.objects.get(schema_name="alpha"))
    before = head_of(expected.schema) if isinstance(expected, Lifecycle) else 0

    response = platform_client.post(expected.url, expected.data)
    connection.set_schema_to_public()

    assert_one_record(expected, response.status_code, before)


def test_platform_admin_change_writes_one_record(platform_client):
    alpha = Tenant.objects.get(schema_name="alpha")
    before = head_of("alpha")

    response = platform_client.post(f"/admin/tenants/tenant/{alpha.pk}/change/", tenant_change_data(alpha))
    connection.set_schema_to_public()

    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    [entry] = new_entries("alpha", before)
    assert entry.detail["event"] == "settings_changed"
    assert entry.detail["changes"]["max_devices"][1] == 654
    assert entry.actor_name == PLATFORM_ACTOR
    assert Tenant.objects.get(pk=alpha.pk).max_devices == 654


def test_platform_admin_unchanged_save_writes_nothing(platform_client):
    alpha = Tenant.objects.get(schema_name="alpha")
    data = tenant_change_data(alpha)
    data["max_devices"] = "" if alpha.max_devices is None else alpha.max_devices
    before = head_of("alpha")

    response = platform_client.post(f"/admin/tenants/tenant/{alpha.pk}/change/", data)
    connection.set_schema_to_public()

    assert response.status_code == 302
    assert new_entries("alpha", before) == []


def test_platform_admin_add_writes_one_record(platform_client):
    response = platform_client.post("/admin/tenants/tenant/add/", tenant_add_data())
    connection.set_schema_to_public()

    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    [entry] = chain_of("au_plat_adm")
    assert (entry.action, entry.detail["event"]) == (AuditAction.TENANT_LIFECYCLE, "provisioned")
    assert entry.actor_name == PLATFORM_ACTOR
