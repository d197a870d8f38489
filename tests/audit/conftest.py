"""Fixtures of the audit tests."""

import pytest
from django.db import connection, transaction

from apps.audit.models import AuditEntry
from apps.tenants.services import provision_tenant
from tests.conftest import ADMIN_PASSWORD

COMMITTED_SCHEMA = "audit_race"
COMMITTED_DOMAIN = "audit-race.localhost"


def chain_head():
    """Return the highest sequence of the current tenant's chain, 0 when it is empty."""
    last = AuditEntry.objects.order_by("-sequence").values_list("sequence", flat=True).first()
    return last or 0


def entries_after(sequence):
    return list(AuditEntry.objects.filter(sequence__gt=sequence).order_by("sequence"))


def run_sql_bypassing_trigger(sql, params=()):
    """Run SQL on the audit table with its append-only triggers disabled, as a superuser could.

    The change stays inside the test's transaction, so it is rolled back with it.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditentry DISABLE TRIGGER USER")
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE audit_auditentry ENABLE TRIGGER USER")


@pytest.fixture
def head(alpha):
    """The sequence of alpha's chain head before the test acts."""
    return chain_head()


@pytest.fixture
def committed_tenant(django_db_setup, django_db_blocker):
    """A committed tenant whose chain other threads can write to; dropped again afterwards."""
    with django_db_blocker.unblock():
        tenant = provision_tenant(
            schema_name=COMMITTED_SCHEMA, name="Audit race", domain=COMMITTED_DOMAIN,
            admin_username="admin", admin_password=ADMIN_PASSWORD,
        )
        yield tenant
        connection.set_schema_to_public()
        tenant.delete(force_drop=True)
