import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django_tenants.utils import schema_context, schema_exists

from apps.accounts.choices import Role
from apps.accounts.roles import capabilities_of
from apps.tenants.models import Tenant
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
        with pytest.raises(ValueError, match="username"):
            provision_tenant(
                schema_name="halfway", name="Halfway", domain="halfway.localhost",
                admin_username="", admin_password=ADMIN_PASSWORD,
            )

        assert not Tenant.objects.filter(schema_name="halfway").exists()
        assert not schema_exists("halfway")


def test_provision_rejects_taken_domain(db):
    with pytest.raises(ValueError, match="'alpha.localhost' is already used"):
        provision_tenant(
            schema_name="other", name="Other", domain="alpha.localhost",
            admin_username="admin", admin_password=ADMIN_PASSWORD,
        )
