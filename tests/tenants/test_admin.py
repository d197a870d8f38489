import pytest
from django.contrib.auth import get_user_model
from django.db import NotSupportedError, connection
from django.test import Client
from django_tenants.utils import get_public_schema_name, schema_exists

from apps.tenants.models import Domain, Tenant

PLATFORM_HOST = "platform.localhost"


@pytest.fixture
def platform_client(db):
    """Browser client on the public domain, logged in as a platform superuser."""
    connection.set_schema_to_public()
    public = Tenant(schema_name=get_public_schema_name(), name="Platform")
    public.save()
    Domain.objects.create(domain=PLATFORM_HOST, tenant=public, is_primary=True)
    superuser = get_user_model().objects.create_superuser(username="platform", password="Plant-room-key-8842")
    client = Client(HTTP_HOST=PLATFORM_HOST)
    client.force_login(superuser)
    return client


def test_platform_tenant_list_offers_no_bulk_action(platform_client):
    response = platform_client.get("/admin/tenants/tenant/")

    assert response.status_code == 200
    assert "Alpha" in response.text
    assert 'name="action"' not in response.text


def test_platform_bulk_delete_is_refused(platform_client):
    alpha_and_beta = list(Tenant.objects.filter(schema_name__in=["alpha", "beta"]).values_list("pk", flat=True))

    platform_client.post(
        "/admin/tenants/tenant/",
        {"action": "delete_selected", "_selected_action": alpha_and_beta, "post": "yes", "index": "0"},
    )

    assert Tenant.objects.filter(pk__in=alpha_and_beta).count() == 2
    assert schema_exists("alpha")
    assert schema_exists("beta")


def test_queryset_delete_of_tenants_is_refused(db):
    with pytest.raises(NotSupportedError, match="leave their schemas behind"):
        Tenant.objects.filter(schema_name__in=["alpha", "beta"]).delete()

    assert Tenant.objects.filter(schema_name__in=["alpha", "beta"]).count() == 2
    assert schema_exists("alpha")


def test_platform_admin_refuses_tenant_user(platform_client, alpha):
    client = Client(HTTP_HOST=PLATFORM_HOST)
    connection.set_schema_to_public()

    response = client.post("/admin/login/?next=/admin/", {"username": "admin", "password": "Correct-horse-battery-4711"})

    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


# The change form records settings and domain changes in the tenant's audit trail ------------------------------


def _lifecycle_details(schema):
    from django_tenants.utils import schema_context

    from apps.audit.choices import AuditAction
    from apps.audit.models import AuditEntry

    with schema_context(schema):
        return list(
            AuditEntry.objects.filter(action=AuditAction.TENANT_LIFECYCLE).order_by("sequence").values_list("detail", flat=True)
        )


def _change_form_data(tenant, *, domains, **fields):
    """POST data of the tenant's change form: its current values with ``fields`` changed, and the domain rows.

    ``domains`` lists (Domain or None, host name, is_primary, delete) per row.
    """
    data = {
        "name": tenant.name, "time_zone": tenant.time_zone,
        "max_devices": tenant.max_devices or "", "max_sensors": tenant.max_sensors or "",
        "max_users": tenant.max_users or "", "api_rate_limit": tenant.api_rate_limit,
        "retention_days": tenant.retention_days or "", "password_min_length": tenant.password_min_length,
        "session_timeout_minutes": tenant.session_timeout_minutes,
        "api_allowed_networks": ",".join(tenant.api_allowed_networks),
        "domains-TOTAL_FORMS": len(domains), "domains-INITIAL_FORMS": sum(1 for row in domains if row[0] is not None),
        "domains-MIN_NUM_FORMS": 0, "domains-MAX_NUM_FORMS": 1000,
    }
    data.update(fields)
    for index, (domain, host, is_primary, delete) in enumerate(domains):
        data[f"domains-{index}-id"] = domain.pk if domain is not None else ""
        data[f"domains-{index}-tenant"] = tenant.pk
        data[f"domains-{index}-domain"] = host
        if is_primary:
            data[f"domains-{index}-is_primary"] = "on"
        if delete:
            data[f"domains-{index}-DELETE"] = "on"
    return data


def test_change_form_audits_settings(platform_client):
    alpha = Tenant.objects.get(schema_name="alpha")
    domain = alpha.domains.get()
    before = len(_lifecycle_details("alpha"))

    response = platform_client.post(
        f"/admin/tenants/tenant/{alpha.pk}/change/",
        _change_form_data(alpha, domains=[(domain, domain.domain, True, False)], max_users=7, session_timeout_minutes=45),
    )

    assert response.status_code == 302, [line for line in response.content.decode().splitlines() if "errorlist" in line or "errornote" in line]
    alpha.refresh_from_db()
    assert alpha.max_users == 7
    assert alpha.session_timeout_minutes == 45
    details = _lifecycle_details("alpha")[before:]
    assert len(details) == 1
    assert details[0]["event"] == "settings_changed"
    assert details[0]["changes"]["max_users"] == [None, 7]
    assert details[0]["changes"]["session_timeout_minutes"][1] == 45


def test_change_form_audits_added_domain(platform_client):
    alpha = Tenant.objects.get(schema_name="alpha")
    domain = alpha.domains.get()
    before = len(_lifecycle_details("alpha"))

    response = platform_client.post(
        f"/admin/tenants/tenant/{alpha.pk}/change/",
        _change_form_data(alpha, domains=[(domain, domain.domain, True, False), (None, "alpha2.localhost", False, False)]),
    )

    assert response.status_code == 302, [line for line in response.content.decode().splitlines() if "errorlist" in line or "errornote" in line]
    details = _lifecycle_details("alpha")[before:]
    assert details == [
        {"event": "settings_changed",
         "changes": {"domains": [["alpha.localhost"], ["alpha.localhost", "alpha2.localhost"]]}},
    ]


def test_change_form_refuses_deleting_last_domain(platform_client):
    alpha = Tenant.objects.get(schema_name="alpha")
    domain = alpha.domains.get()
    before = _lifecycle_details("alpha")

    response = platform_client.post(
        f"/admin/tenants/tenant/{alpha.pk}/change/",
        _change_form_data(alpha, domains=[(domain, domain.domain, True, True)]),
    )

    assert response.status_code == 200
    assert "needs at least one domain" in response.text
    assert alpha.domains.count() == 1
    assert _lifecycle_details("alpha") == before


def test_add_form_rejects_existing_schema(platform_client):
    response = platform_client.post(
        "/admin/tenants/tenant/add/",
        {
            "name": "Bad", "schema_name": "information_schema", "time_zone": "UTC", "api_rate_limit": "600/min",
            "password_min_length": 12, "session_timeout_minutes": 30, "api_allowed_networks": "",
            "domains-TOTAL_FORMS": 0, "domains-INITIAL_FORMS": 0, "domains-MIN_NUM_FORMS": 0,
            "domains-MAX_NUM_FORMS": 1000,
        },
    )

    assert response.status_code == 200
    assert "&#x27;information_schema&#x27;" in response.text
    assert not Tenant.objects.filter(schema_name="information_schema").exists()
    assert schema_exists("information_schema")


def test_change_form_keeps_schema_name(platform_client):
    alpha = Tenant.objects.get(schema_name="alpha")
    domain = alpha.domains.get()

    response = platform_client.post(
        f"/admin/tenants/tenant/{alpha.pk}/change/",
        _change_form_data(alpha, domains=[(domain, domain.domain, True, False)], schema_name="information_schema"),
    )

    assert response.status_code == 302
    alpha.refresh_from_db()
    assert alpha.schema_name == "alpha"
