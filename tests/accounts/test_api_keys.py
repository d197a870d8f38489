from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.accounts.models import ApiKey
from apps.accounts.services import create_api_key, revoke_api_key
from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from tests.conftest import TENANT_DOMAINS, admin_of
from tests.factories import SiteFactory


def _key_client(key, schema="alpha"):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS[schema])
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


@pytest.fixture
def admin(alpha):
    return admin_of("alpha")


def test_api_key_created_over_api_is_shown_once(api_as):
    client = api_as(Role.ADMIN)

    created = client.post("/api/v1/api-keys/", {"name": "Historian export", "role": "viewer"}, format="json")
    listed = client.get("/api/v1/api-keys/")
    detail = client.get(f"/api/v1/api-keys/{created.data['prefix']}/")

    assert created.status_code == 201
    assert created.data["key"].startswith(created.data["prefix"] + ".")
    assert created.data["role"] == "viewer"
    assert "key" not in listed.data["results"][0]
    assert "key" not in detail.data
    assert listed.data["results"][0]["prefix"] == created.data["prefix"]


def test_api_key_is_stored_only_as_hash(admin):
    api_key, key = create_api_key(name="Historian export", role=Role.VIEWER, actor=admin)

    secret = key.partition(".")[2]
    stored = ApiKey.objects.filter(pk=api_key.pk).values().get()

    assert all(secret not in str(value) for value in stored.values())
    assert api_key.hashed_key != secret


def test_api_key_acts_with_its_role(admin):
    _, key = create_api_key(name="Dashboard wall", role=Role.VIEWER, actor=admin)
    client = _key_client(key)

    listed = client.get("/api/v1/units/")
    created = client.post("/api/v1/sites/", {"name": "Site B"}, format="json")

    assert listed.status_code == 200
    assert created.status_code == 403


def test_api_key_with_admin_role_writes(admin):
    _, key = create_api_key(name="Provisioning", role=Role.ADMIN, actor=admin)

    response = _key_client(key).post("/api/v1/sites/", {"name": "Site B"}, format="json")

    assert response.status_code == 201


def test_revoked_api_key_is_rejected(admin):
    api_key, key = create_api_key(name="Historian export", role=Role.VIEWER, actor=admin)
    revoke_api_key(api_key, actor=admin)

    response = _key_client(key).get("/api/v1/units/")

    assert response.status_code == 401
    assert "invalid or revoked" in response.data["detail"]


def test_api_key_revoked_over_api(api_as, admin):
    api_key, key = create_api_key(name="Historian export", role=Role.VIEWER, actor=admin)

    revoked = api_as(Role.ADMIN).delete(f"/api/v1/api-keys/{api_key.prefix}/")

    api_key.refresh_from_db()
    assert revoked.status_code == 204
    assert api_key.revoked is True
    assert _key_client(key).get("/api/v1/units/").status_code == 401


def test_expired_api_key_names_expiry(admin):
    _, key = create_api_key(
        name="Temporary", role=Role.VIEWER, actor=admin, expiry_date=timezone.now() - timedelta(minutes=1)
    )

    response = _key_client(key).get("/api/v1/units/")

    assert response.status_code == 401
    assert "expired" in response.data["detail"]


def test_wrong_secret_with_known_prefix_is_rejected(admin):
    api_key, _ = create_api_key(name="Historian export", role=Role.VIEWER, actor=admin)

    response = _key_client(f"{api_key.prefix}.not-the-secret").get("/api/v1/units/")

    assert response.status_code == 401


def test_api_key_of_other_tenant_is_rejected(admin, beta):
    _, key = create_api_key(name="Historian export", role=Role.ADMIN, actor=admin)
    connection.set_tenant(beta)
    SiteFactory(name="Beta site")
    connection.set_schema_to_public()

    response = _key_client(key, schema="beta").get("/api/v1/sites/")

    assert response.status_code == 401
    assert "Beta site" not in response.content.decode()


def test_api_key_records_last_use(admin):
    api_key, key = create_api_key(name="Historian export", role=Role.VIEWER, actor=admin)

    _key_client(key).get("/api/v1/units/")

    api_key.refresh_from_db()
    assert api_key.last_used_at is not None


def test_api_key_user_cannot_log_in_with_password(admin):
    api_key, _ = create_api_key(name="Historian export", role=Role.VIEWER, actor=admin)

    assert not api_key.user.has_usable_password()


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.VIEWER, Role.AUDITOR])
def test_api_key_creation_needs_manage_users(user_of_role, role):
    with pytest.raises(PermissionDenied, match="add, change and deactivate users"):
        create_api_key(name="Sneaky", role=Role.ADMIN, actor=user_of_role(role))

    assert not ApiKey.objects.exists()


def test_api_key_with_unknown_role_names_it(api_as):
    response = api_as(Role.ADMIN).post("/api/v1/api-keys/", {"name": "Export", "role": "root"}, format="json")

    assert response.status_code == 400
    assert "root" in str(response.data["role"])


def test_api_key_events_are_audited(admin):
    api_key, _ = create_api_key(name="Historian export", role=Role.VIEWER, actor=admin)
    revoke_api_key(api_key, actor=admin)

    actions = list(AuditEntry.objects.filter(actor_id=str(admin.pk)).values_list("action", flat=True))

    assert AuditAction.API_KEY_CREATED in actions
    assert AuditAction.API_KEY_REVOKED in actions


def test_revoking_twice_changes_nothing(admin):
    api_key, _ = create_api_key(name="Historian export", role=Role.VIEWER, actor=admin)

    first = revoke_api_key(api_key, actor=admin)
    second = revoke_api_key(api_key, actor=admin)

    assert first is True
    assert second is False
