"""Tenant provisioning, suspension and resumption are recorded in the tenant's own chain."""

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django_tenants.utils import schema_context

from apps.audit.choices import ActorType, AuditAction
from apps.audit.models import AuditEntry
from apps.audit.verify import verify_chain
from apps.tenants.services import resume_tenant, suspend_tenant
from tests.audit.conftest import COMMITTED_DOMAIN, COMMITTED_SCHEMA


@pytest.fixture
def platform_user(db):
    connection.set_schema_to_public()
    return get_user_model().objects.create_superuser(username="platform-ops", password="Platform-ops-pass-4711")


def lifecycle_entries():
    with schema_context(COMMITTED_SCHEMA):
        return list(AuditEntry.objects.filter(action=AuditAction.TENANT_LIFECYCLE).order_by("sequence"))


def test_provisioning_is_first_entry(committed_tenant, db):
    with schema_context(COMMITTED_SCHEMA):
        first = AuditEntry.objects.order_by("sequence").first()

    assert (first.sequence, first.action) == (1, AuditAction.TENANT_LIFECYCLE)
    assert (first.actor_type, first.actor_id) == (ActorType.SYSTEM_JOB, "tenants.provision")
    assert first.detail == {"event": "provisioned", "domain": COMMITTED_DOMAIN, "admin_username": "admin"}
    assert (first.object_type, first.object_id) == ("tenants.tenant", str(committed_tenant.pk))


def test_suspend_and_resume_recorded(committed_tenant, platform_user):
    assert suspend_tenant(committed_tenant, actor=platform_user, reason="Contract paused")
    assert resume_tenant(committed_tenant, actor=platform_user)

    events = [(entry.detail["event"], entry.actor_name) for entry in lifecycle_entries()]
    assert events == [
        ("provisioned", "tenants.provision"),
        ("suspended", "platform:platform-ops"),
        ("resumed", "platform:platform-ops"),
    ]
    assert lifecycle_entries()[1].detail["reason"] == "Contract paused"
    assert verify_chain(COMMITTED_SCHEMA).intact


def test_repeated_suspend_records_once(committed_tenant, platform_user):
    assert suspend_tenant(committed_tenant, actor=platform_user, reason="First")
    assert not suspend_tenant(committed_tenant, actor=platform_user, reason="Second")

    assert [entry.detail["event"] for entry in lifecycle_entries()] == ["provisioned", "suspended"]
