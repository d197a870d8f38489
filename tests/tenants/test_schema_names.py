"""Schema names a tenant may not take, and clean-ups that drop only a schema the same run created."""

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django_tenants.utils import schema_exists

from apps.tenants.backup import restore_tenant
from apps.tenants.models import ProvisioningJob, Tenant
from apps.tenants.services import (
    SCHEMA_OWNER_COMMENT,
    check_provisioning_request,
    create_tenant_schema,
    discard_tenant,
)
from tests.conftest import ADMIN_PASSWORD
from tests.tenants.test_platform_api import NEW_TENANT, TENANTS_URL, platform, platform_client  # noqa: F401


@pytest.mark.parametrize("schema_name", ["information_schema", "pg_toast", "pg_catalog", "public"])
def test_api_rejects_reserved_schema_with_400(platform, schema_name):
    response = platform_client(platform["staff"]).post(
        TENANTS_URL, {**NEW_TENANT, "schema_name": schema_name}, format="json"
    )

    assert response.status_code == 400
    assert repr(schema_name) in response.json()["schema_name"][0]
    assert not ProvisioningJob.objects.exists()
    assert schema_exists("information_schema")


@pytest.mark.parametrize("schema_name", ["information_schema", "public"])
def test_service_rejects_reserved_schema(db, schema_name):
    with pytest.raises(ValidationError, match=repr(schema_name)):
        check_provisioning_request(
            schema_name=schema_name, name="X", domain="x.localhost", admin_username="admin",
            admin_password=ADMIN_PASSWORD,
        )


def test_restore_rejects_system_schema(db, tmp_path):
    with pytest.raises(ValidationError, match="'information_schema'"):
        restore_tenant(tmp_path / "any.zip", schema_name="information_schema", domain="x.localhost")

    assert schema_exists("information_schema")


def _leftover_tenant(schema):
    tenant = Tenant(schema_name=schema, name=schema.title())
    tenant.auto_create_schema = False
    tenant.save()
    return tenant


def test_discard_keeps_foreign_schema(db):
    tenant = _leftover_tenant("stray")
    with connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA stray")
        cursor.execute("CREATE TABLE stray.kept (id integer)")

    discard_tenant(tenant)

    assert not Tenant.objects.filter(schema_name="stray").exists()
    assert schema_exists("stray")


def test_discard_keeps_schema_of_other_tenant_row(db):
    first = _leftover_tenant("stray")
    create_tenant_schema(first)
    first.auto_drop_schema = False
    first.delete()
    second = _leftover_tenant("stray")

    discard_tenant(second)

    assert schema_exists("stray")


def test_discard_drops_own_schema(db):
    tenant = _leftover_tenant("stray")
    tenant_id = tenant.pk
    create_tenant_schema(tenant)
    with connection.cursor() as cursor:
        cursor.execute("SELECT obj_description('stray'::regnamespace, 'pg_namespace')")
        comment = cursor.fetchone()[0]

    discard_tenant(tenant)

    assert comment == SCHEMA_OWNER_COMMENT.format(tenant_id=tenant_id)
    assert not schema_exists("stray")
    assert not Tenant.objects.filter(schema_name="stray").exists()


def test_discard_never_drops_information_schema(db):
    # A tenant row of a system schema name, as one that passed the old checks would have left.
    tenant = Tenant(schema_name="information_schema", name="Bad")
    tenant.auto_create_schema = False
    tenant.save()

    discard_tenant(tenant)

    assert schema_exists("information_schema")
