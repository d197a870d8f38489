import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection
from django_tenants.utils import schema_exists

from apps.accounts.choices import Role
from apps.accounts.roles import capabilities_of
from apps.tenants.choices import ProvisioningStep, TenantStatus
from apps.tenants.models import Domain, Tenant
from apps.tenants.quotas import QuotaExceeded
from apps.tenants.services import provision_tenant
from tests.conftest import ADMIN_PASSWORD


def test_provisioned_admin_has_admin_role(alpha):
    admin = get_user_model().objects.get(username="admin")

    assert admin.role == Role.ADMIN
    assert not admin.is_superuser
    assert capabilities_of(admin) >= {"configure_plant", "manage_users"}


def test_provision_with_invalid_admin_leaves_no_schema(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        connection.set_schema_to_public()
        with pytest.raises(ValidationError, match="Admin user name '' is invalid"):
            provision_tenant(
                schema_name="halfway", name="Halfway", domain="halfway.localhost",
                admin_username="", admin_password=ADMIN_PASSWORD,
            )

        assert not Tenant.objects.filter(schema_name="halfway").exists()
        assert not schema_exists("halfway")


def test_admin_rejected_mid_way_leaves_no_schema(django_db_setup, django_db_blocker):
    def lower_quota_at_admin_step(step):
        # The operator lowers the user quota while the schema is being migrated, so the admin is rejected.
        if step == ProvisioningStep.ADMIN:
            Tenant.objects.filter(schema_name="halfway").update(max_users=0)

    with django_db_blocker.unblock():
        connection.set_schema_to_public()
        with pytest.raises(QuotaExceeded, match="max_users"):
            provision_tenant(
                schema_name="halfway", name="Halfway", domain="halfway.localhost",
                admin_username="admin", admin_password=ADMIN_PASSWORD, on_step=lower_quota_at_admin_step,
            )

        assert not Tenant.objects.filter(schema_name="halfway").exists()
        assert not Domain.objects.filter(domain="halfway.localhost").exists()
        assert not schema_exists("halfway")


def test_provision_rejects_taken_domain(db):
    with pytest.raises(ValueError, match="'alpha.localhost' is already used"):
        provision_tenant(
            schema_name="other", name="Other", domain="alpha.localhost",
            admin_username="admin", admin_password=ADMIN_PASSWORD,
        )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schema_name": "Bad Name"}, "'Bad Name' is invalid"),
        ({"schema_name": "pg_catalog2"}, "'pg_catalog2' is invalid"),
        ({"domain": "http://x5.localhost/"}, "'http://x5.localhost/' is not a host name"),
        ({"domain": "Upper.localhost"}, "is not a host name"),
        ({"admin_password": "short"}, "too short"),
    ],
)
def test_provision_rejects_bad_input_before_schema(db, changes, message):
    arguments = {
        "schema_name": "delta", "name": "Delta", "domain": "delta.localhost",
        "admin_username": "admin", "admin_password": "Another-strong-pass-4711", **changes,
    }

    with pytest.raises(ValidationError) as caught:
        provision_tenant(**arguments)

    assert message in " ".join(caught.value.messages)
    assert not Tenant.objects.filter(schema_name=arguments["schema_name"]).exists()


def test_platform_admin_form_rejects_bad_tenant(db):
    tenant = Tenant(schema_name="Bad Name", name="Bad", time_zone="Mars/Olympus")

    with pytest.raises(ValidationError) as caught:
        tenant.full_clean()

    assert "schema_name" in caught.value.message_dict
    assert "'Mars/Olympus' is not an IANA time zone name" in " ".join(caught.value.message_dict["time_zone"])


def test_provisioned_tenant_ends_active(db):
    tenant = provision_tenant(
        schema_name="epsilon", name="Epsilon", domain="epsilon.localhost",
        admin_username="admin", admin_password="Another-strong-pass-4711",
    )

    assert tenant.status == TenantStatus.ACTIVE
    assert Tenant.objects.active().filter(pk=tenant.pk).exists()
    connection.set_schema_to_public()
