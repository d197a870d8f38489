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
