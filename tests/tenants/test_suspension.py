import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.tenants.choices import TenantStatus
from apps.tenants.models import Tenant
from apps.tenants.scheduler import ActiveTenantScheduler
from apps.tenants.services import resume_tenant, suspend_tenant
from apps.units.models import Unit
from tests.conftest import ADMIN_PASSWORD, TENANT_DOMAINS, access_token_for, admin_of, refusal_code
from tests.factories import UnitFactory
from thermacore.asgi import application


@pytest.fixture
def platform_user(db):
    connection.set_schema_to_public()
    return get_user_model().objects.create_superuser(username="operator-on-call", password="Plant-room-key-8842")


@pytest.fixture
def suspended_alpha(alpha, platform_user):
    connection.set_tenant(alpha)
    UnitFactory(name="Kept unit")
    token = access_token_for("alpha", admin_of("alpha"))
    connection.set_schema_to_public()
    suspend_tenant(alpha, actor=platform_user, reason="Invoice overdue")
    return {"tenant": alpha, "token": token}


def _alpha_api(token=None):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_suspended_tenant_rejects_api_token(suspended_alpha):
    response = _alpha_api(suspended_alpha["token"]).get("/api/v1/units/")

    assert response.status_code == 403
    assert response.json()["code"] == "tenant_suspended"
    assert "suspended" in response.json()["detail"]


def test_suspended_tenant_issues_no_token(suspended_alpha):
    response = _alpha_api().post("/api/v1/auth/token/", {"username": "admin", "password": ADMIN_PASSWORD}, format="json")

    assert response.status_code == 403
    assert "access" not in response.json()


def test_suspended_tenant_rejects_login_and_pages(suspended_alpha):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])

    login = client.post("/accounts/login/", {"username": "admin", "password": ADMIN_PASSWORD})
    page = client.get("/")

    assert login.status_code == 403
    assert page.status_code == 403
    assert "suspended" in page.text


def test_suspension_keeps_data_and_other_tenants(suspended_alpha, beta):
    beta_api = APIClient(HTTP_HOST=TENANT_DOMAINS["beta"])
    beta_api.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('beta', admin_of('beta'))}")

    response = beta_api.get("/api/v1/units/")

    assert response.status_code == 200
    with schema_context("alpha"):
        assert Unit.objects.filter(name="Kept unit").exists()


def test_resume_serves_tenant_again(suspended_alpha, platform_user):
    resumed = resume_tenant(suspended_alpha["tenant"], actor=platform_user)

    response = _alpha_api(suspended_alpha["token"]).get("/api/v1/units/")

    assert resumed is True
    assert suspended_alpha["tenant"].status == TenantStatus.ACTIVE
    assert response.status_code == 200


def test_suspend_twice_changes_nothing(suspended_alpha, platform_user):
    again = suspend_tenant(suspended_alpha["tenant"], actor=platform_user, reason="Second try")

    suspended_alpha["tenant"].refresh_from_db()
    assert again is False
    assert suspended_alpha["tenant"].suspension_reason == "Invoice overdue"


def test_suspend_without_reason_names_tenant(alpha, platform_user):
    with pytest.raises(ValueError, match="'alpha'"):
        suspend_tenant(alpha, actor=platform_user, reason="  ")

    alpha.refresh_from_db()
    assert alpha.status == TenantStatus.ACTIVE


def test_suspension_is_audited_in_tenant(suspended_alpha, platform_user):
    resume_tenant(suspended_alpha["tenant"], actor=platform_user)

    with schema_context("alpha"):
        entries = list(AuditEntry.objects.filter(action=AuditAction.TENANT_LIFECYCLE).order_by("sequence"))

    # Provisioning recorded the first entry of the tenant's chain.
    assert [entry.detail["event"] for entry in entries] == ["provisioned", "suspended", "resumed"]
    assert entries[1].detail["reason"] == "Invoice overdue"
    assert entries[1].actor_name == "platform:operator-on-call"


def test_scheduler_skips_suspended_tenant(suspended_alpha):
    schemas = set(ActiveTenantScheduler.get_queryset().values_list("schema_name", flat=True))

    assert "alpha" not in schemas
    assert "beta" in schemas


def test_suspend_command_suspends_and_resumes(alpha, platform_user):
    call_command("suspend_tenant", "alpha", "--reason", "Maintenance window", "--actor", "operator-on-call")
    suspended = Tenant.objects.get(schema_name="alpha").status
    call_command("suspend_tenant", "alpha", "--resume", "--actor", "operator-on-call")

    assert suspended == TenantStatus.SUSPENDED
    assert Tenant.objects.get(schema_name="alpha").status == TenantStatus.ACTIVE


def test_suspend_command_rejects_unknown_schema(platform_user):
    with pytest.raises(CommandError, match="'nosuch'"):
        call_command("suspend_tenant", "nosuch", "--reason", "x", "--actor", "operator-on-call")


@pytest.fixture
def committed_suspended_beta(django_db_setup, django_db_blocker):
    """Beta suspended in a committed transaction, so that WebSocket threads see it; resumed afterwards."""
    with django_db_blocker.unblock():
        connection.set_schema_to_public()
        # NOTE: the platform user is not deleted afterwards. Deleting a public-schema user fails,
        # because tenant-only models (alarms) have foreign keys to users but no table in that schema.
        actor, _ = get_user_model().objects.get_or_create(username="ws-suspender", defaults={"is_superuser": True})
        beta = Tenant.objects.get(schema_name="beta")
        token = access_token_for("beta", admin_of("beta"))
        suspend_tenant(beta, actor=actor, reason="WebSocket test")
    yield token
    with django_db_blocker.unblock():
        connection.set_schema_to_public()
        resume_tenant(beta, actor=actor)


@pytest.mark.asyncio
async def test_suspended_tenant_refuses_websocket(committed_suspended_beta, django_db_blocker):
    headers = [
        (b"host", TENANT_DOMAINS["beta"].encode()),
        (b"authorization", f"Bearer {committed_suspended_beta}".encode()),
    ]
    with django_db_blocker.unblock():
        code = await refusal_code(WebsocketCommunicator(application, "/ws/live/", headers=headers))

    assert code == 4403
