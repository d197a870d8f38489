"""The platform API on the public domain: who may use it, provisioning with progress, settings, suspension."""

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models.signals import post_save
from django.test import Client
from django_tenants.utils import schema_context, schema_exists
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from apps.accounts.tokens import TENANT_CLAIM
from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.telemetry import latest
from apps.tenants.choices import ProvisioningStatus, TenantStatus
from apps.tenants.jobs import run_provisioning_job
from apps.tenants.models import Domain, ProvisioningJob, Tenant
from apps.tenants.services import create_tenant_schema, ensure_public_tenant
from tests.conftest import ADMIN_PASSWORD, TENANT_DOMAINS, access_token_for, admin_of

PLATFORM_HOST = "platform.localhost"
STAFF_PASSWORD = "Plant-room-key-8842"
TENANTS_URL = "/api/platform/v1/tenants/"
NEW_TENANT = {
    "schema_name": "gamma",
    "name": "Gamma Heating",
    "domain": "gamma.localhost",
    "admin_username": "gamma-admin",
    "admin_password": "Boiler-room-key-5519",
    "admin_email": "ops@gamma.example",
    "time_zone": "Europe/Berlin",
    "settings": {"max_devices": 20, "retention_days": 400, "api_rate_limit": "100/min"},
}


@pytest.fixture
def platform(db):
    """The public schema served on PLATFORM_HOST, with one staff user and one user without staff rights."""
    connection.set_schema_to_public()
    ensure_public_tenant(PLATFORM_HOST)
    users = get_user_model().objects
    staff = users.create_user(username="platform-staff", password=STAFF_PASSWORD, is_staff=True)
    plain = users.create_user(username="platform-plain", password=STAFF_PASSWORD)
    yield {"staff": staff, "plain": plain}
    connection.set_schema_to_public()


def platform_client(user=None):
    client = APIClient(HTTP_HOST=PLATFORM_HOST)
    if user is not None:
        client.force_login(user)
    connection.set_schema_to_public()
    return client


@pytest.fixture
def staff_api(platform):
    return platform_client(platform["staff"])


def public_token(user):
    token = AccessToken.for_user(user)
    token[TENANT_CLAIM] = "public"
    return str(token)


def lifecycle_events(schema):
    with schema_context(schema):
        return list(
            AuditEntry.objects.filter(action=AuditAction.TENANT_LIFECYCLE).order_by("sequence")
            .values_list("detail", "actor_name")
        )


# Who may use the platform API ----------------------------------------------------------------------------------


def test_anonymous_request_gets_401(platform):
    response = platform_client().get(TENANTS_URL)

    assert response.status_code == 401


def test_public_user_without_staff_gets_403(platform):
    response = platform_client(platform["plain"]).get(TENANTS_URL)

    assert response.status_code == 403
    assert "platform staff" in response.json()["detail"]


def test_staff_session_lists_tenants(staff_api):
    response = staff_api.get(TENANTS_URL)

    assert response.status_code == 200
    schemas = [tenant["schema_name"] for tenant in response.json()["results"]]
    assert "alpha" in schemas
    assert "beta" in schemas
    assert "public" not in schemas


def test_staff_bearer_token_is_accepted(platform):
    client = platform_client()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {public_token(platform['staff'])}")

    response = client.get(f"{TENANTS_URL}alpha/")

    assert response.status_code == 200
    assert response.json()["domains"] == [TENANT_DOMAINS["alpha"]]


def test_tenant_admin_token_gets_401(platform):
    client = platform_client()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', admin_of('alpha'))}")

    response = client.get(TENANTS_URL)

    assert response.status_code == 401
    assert "another tenant" in response.json()["detail"]


def test_tenant_admin_session_is_unknown_here(platform, alpha):
    client = Client(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.force_login(admin_of("alpha"))
    connection.set_schema_to_public()

    response = client.get(TENANTS_URL, HTTP_HOST=PLATFORM_HOST)

    assert response.status_code == 401


@pytest.mark.parametrize("path", [TENANTS_URL, f"{TENANTS_URL}alpha/", "/api/platform/schema/"])
def test_platform_urls_404_on_tenant_domain(alpha, path):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', admin_of('alpha'))}")

    response = client.get(path)

    assert response.status_code == 404


def test_staff_token_rejected_by_tenant_api(platform):
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {public_token(platform['staff'])}")

    response = client.get("/api/v1/units/")

    assert response.status_code == 401


def test_non_staff_cannot_create_or_suspend(platform):
    client = platform_client(platform["plain"])

    created = client.post(TENANTS_URL, NEW_TENANT, format="json")
    suspended = client.post(f"{TENANTS_URL}alpha/suspend/", {"reason": "test"}, format="json")

    assert created.status_code == 403
    assert suspended.status_code == 403
    assert not ProvisioningJob.objects.exists()
    assert Tenant.objects.get(schema_name="alpha").status == TenantStatus.ACTIVE


# Provisioning ---------------------------------------------------------------------------------------------------


@pytest.fixture
def eager_tasks():
    """Run Celery tasks in the calling thread, as a worker would run them."""
    from thermacore.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture
def job_steps():
    """Collect (status, step, progress) of every saved ProvisioningJob, as a polling client would see them."""
    seen = []

    def collect(sender, instance, **kwargs):
        seen.append((instance.status, instance.step, instance.progress))

    post_save.connect(collect, sender=ProvisioningJob, dispatch_uid="test-job-steps")
    yield seen
    post_save.disconnect(dispatch_uid="test-job-steps", sender=ProvisioningJob)


def test_create_returns_202_with_pending_job(staff_api, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = staff_api.post(TENANTS_URL, NEW_TENANT, format="json")

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    assert body["progress"] == 0
    assert body["tenant"] is None
    assert "admin_password" not in body
    assert response["Location"].endswith(f"/api/platform/v1/provisioning-jobs/{body['id']}/")
    assert len(callbacks) == 1
    job = ProvisioningJob.objects.get(pk=body["id"])
    assert job.admin_password_hash.startswith("md5$")
    assert NEW_TENANT["admin_password"] not in job.admin_password_hash
    assert not Tenant.objects.filter(schema_name="gamma").exists()


def test_create_provisions_and_reports_progress(staff_api, eager_tasks, job_steps, django_capture_on_commit_callbacks):
    # A deleted tenant of the same schema name left a live value behind.
    latest.get_client().hset(latest.cache_key("gamma"), "1", "1700000000000|99.0|0")
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_api.post(TENANTS_URL, NEW_TENANT, format="json")
    job_url = response["Location"]
    polled = staff_api.get(job_url)

    assert response.status_code == 202
    assert polled.status_code == 200
    assert polled.json()["status"] == "succeeded"
    assert polled.json()["progress"] == 100
    assert polled.json()["tenant"] == "gamma"
    steps = [step for _status, step, _progress in job_steps]
    assert steps == ["queued", "schema", "domain", "admin", "activating", "done"]
    progress = [value for _status, _step, value in job_steps]
    assert progress == sorted(progress)

    tenant = Tenant.objects.get(schema_name="gamma")
    assert tenant.status == TenantStatus.ACTIVE
    assert tenant.time_zone == "Europe/Berlin"
    assert tenant.max_devices == 20
    assert tenant.retention_days == 400
    assert tenant.api_rate_limit == "100/min"
    assert Domain.objects.get(domain="gamma.localhost").tenant == tenant
    with schema_context("gamma"):
        admin = get_user_model().objects.get(username="gamma-admin")
        assert admin.check_password(NEW_TENANT["admin_password"])
        assert admin.role == "admin"
    assert lifecycle_events("gamma") == [
        ({"event": "provisioned", "domain": "gamma.localhost", "admin_username": "gamma-admin"},
         "platform:platform-staff"),
    ]
    assert latest.get_latest("gamma", [1]) == {}

    token = APIClient(HTTP_HOST="gamma.localhost").post(
        "/api/v1/auth/token/", {"username": "gamma-admin", "password": NEW_TENANT["admin_password"]}, format="json"
    )
    assert token.status_code == 200


def test_failed_provisioning_reports_error(platform, eager_tasks, django_capture_on_commit_callbacks):
    client = platform_client(platform["staff"])
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(TENANTS_URL, NEW_TENANT, format="json")
    # Another tenant takes the domain while the job waits for a worker.
    Domain.objects.create(domain="gamma.localhost", tenant=Tenant.objects.get(schema_name="beta"), is_primary=False)

    job = run_provisioning_job(response.json()["id"])

    assert job.status == ProvisioningStatus.FAILED
    assert "gamma.localhost" in job.error
    assert not Tenant.objects.filter(schema_name="gamma").exists()
    assert not schema_exists("gamma")


def test_job_runs_only_once(platform, django_capture_on_commit_callbacks):
    client = platform_client(platform["staff"])
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(TENANTS_URL, {**NEW_TENANT, "settings": {}}, format="json")
    job_id = response.json()["id"]
    first = run_provisioning_job(job_id)

    second = run_provisioning_job(job_id)

    assert first.status == ProvisioningStatus.SUCCEEDED
    assert second.status == ProvisioningStatus.SUCCEEDED
    assert Tenant.objects.filter(schema_name="gamma").count() == 1


def test_interrupted_job_is_failed_and_cleaned(platform):
    job = ProvisioningJob.objects.create(
        schema_name="delta", name="Delta", domain="delta.localhost", admin_username="admin",
        admin_password_hash="md5$x$y", requested_by="platform-staff", status=ProvisioningStatus.RUNNING,
    )
    # The worker died half-way through the migrations: the row and a partly filled schema are left.
    leftover = Tenant(schema_name="delta", name="Delta", status=TenantStatus.PROVISIONING)
    leftover.auto_create_schema = False
    leftover.save()
    create_tenant_schema(leftover)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE delta.half_migrated (id integer)")

    result = run_provisioning_job(job.pk)

    assert result.status == ProvisioningStatus.FAILED
    assert "Request the tenant again" in result.error
    assert not Tenant.objects.filter(schema_name="delta").exists()
    assert not schema_exists("delta")


def test_interrupted_job_keeps_foreign_schema(platform):
    job = ProvisioningJob.objects.create(
        schema_name="delta", name="Delta", domain="delta.localhost", admin_username="admin",
        admin_password_hash="md5$x$y", requested_by="platform-staff", status=ProvisioningStatus.RUNNING,
    )
    # The worker died before it created the schema, and someone else created one of that name since.
    leftover = Tenant(schema_name="delta", name="Delta", status=TenantStatus.PROVISIONING)
    leftover.auto_create_schema = False
    leftover.save()
    with connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA delta")

    result = run_provisioning_job(job.pk)

    assert result.status == ProvisioningStatus.FAILED
    assert not Tenant.objects.filter(schema_name="delta").exists()
    assert schema_exists("delta")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"schema_name": "Bad-Name"}, "schema_name"),
        ({"schema_name": "pg_catalog2"}, "schema_name"),
        ({"domain": "gamma.localhost:8000"}, "domain"),
        ({"domain": "http://gamma.localhost"}, "domain"),
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"admin_password": "password"}, "admin_password"),
        ({"admin_email": "not-an-address"}, "admin_email"),
        ({"settings": {"max_devices": -1}}, "settings"),
        ({"settings": {"retention_days": 0}}, "settings"),
        ({"settings": {"retention_days": 1000000000}}, "settings"),
        ({"settings": {"retention_days": 36501}}, "settings"),
        ({"settings": {"api_rate_limit": "lots"}}, "settings"),
        ({"settings": {"api_allowed_networks": ["10.0.0.1/8"]}}, "settings"),
    ],
)
def test_create_rejects_invalid_input(staff_api, changes, field):
    response = staff_api.post(TENANTS_URL, {**NEW_TENANT, **changes}, format="json")

    assert response.status_code == 400
    assert field in response.json()
    assert not ProvisioningJob.objects.exists()


@pytest.mark.parametrize(("changes", "taken"), [({"schema_name": "alpha"}, "'alpha'"), ({"domain": "beta.localhost"}, "'beta.localhost'")])
def test_create_rejects_taken_name_with_409(staff_api, changes, taken):
    response = staff_api.post(TENANTS_URL, {**NEW_TENANT, **changes}, format="json")

    assert response.status_code == 409
    assert taken in response.json()["detail"]


def test_second_request_for_same_schema_gets_409(staff_api, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        first = staff_api.post(TENANTS_URL, NEW_TENANT, format="json")
        second = staff_api.post(TENANTS_URL, {**NEW_TENANT, "domain": "gamma2.localhost"}, format="json")

    assert first.status_code == 202
    assert second.status_code == 409
    assert "already being provisioned" in second.json()["detail"]


# Settings, suspension and resumption ---------------------------------------------------------------------------


def test_update_rejects_retention_beyond_maximum(staff_api):
    response = staff_api.patch(f"{TENANTS_URL}alpha/", {"retention_days": 1000000000}, format="json")

    assert response.status_code == 400
    assert "retention_days" in response.json()
    assert Tenant.objects.get(schema_name="alpha").retention_days is None


def test_update_settings_changes_and_audits(staff_api):
    response = staff_api.patch(
        f"{TENANTS_URL}alpha/", {"max_devices": 5, "retention_days": 30, "two_factor_roles": ["admin"]}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["max_devices"] == 5
    alpha = Tenant.objects.get(schema_name="alpha")
    assert alpha.retention_days == 30
    assert alpha.two_factor_roles == ["admin"]
    detail, actor = lifecycle_events("alpha")[-1]
    assert detail["event"] == "settings_changed"
    assert detail["changes"]["max_devices"] == [None, 5]
    assert detail["changes"]["retention_days"] == [None, 30]
    assert actor == "platform:platform-staff"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"retention_days": 0}, "retention_days"),
        ({"api_rate_limit": "fast"}, "api_rate_limit"),
        ({"password_min_length": 4}, "password_min_length"),
        ({"session_timeout_minutes": 1}, "session_timeout_minutes"),
        ({"time_zone": "Nowhere/City"}, "time_zone"),
        ({"two_factor_roles": ["root"]}, "two_factor_roles"),
    ],
)
def test_update_rejects_invalid_values(staff_api, changes, field):
    before = lifecycle_events("alpha")

    response = staff_api.patch(f"{TENANTS_URL}alpha/", changes, format="json")

    assert response.status_code == 400
    assert field in response.json()
    assert lifecycle_events("alpha") == before


def test_update_without_field_is_rejected(staff_api):
    response = staff_api.patch(f"{TENANTS_URL}alpha/", {}, format="json")

    assert response.status_code == 400
    assert "changes nothing" in response.json()[0]


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"status": "suspended"}, "status", "read-only"),
        ({"schema_name": "alpha2"}, "schema_name", "read-only"),
        ({"max_devices": 5, "max_device": 6}, "max_device", "Unknown field"),
    ],
)
def test_update_rejects_unknown_and_read_only_fields(staff_api, changes, field, message):
    before = lifecycle_events("alpha")

    response = staff_api.patch(f"{TENANTS_URL}alpha/", changes, format="json")

    assert response.status_code == 400
    assert message in response.json()[field][0]
    alpha = Tenant.objects.get(schema_name="alpha")
    assert alpha.status == TenantStatus.ACTIVE
    assert alpha.max_devices is None
    assert lifecycle_events("alpha") == before


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"settings": {"max_devices": 5, "unknown_key": 1}}, "settings", "unknown_key"),
        ({"tenant_status": "active"}, "tenant_status", "Unknown field"),
        ({"admin_username": "a b/c"}, "admin_username", "'a b/c'"),
        ({"time_zone": "localtime"}, "time_zone", "'localtime'"),
        ({"time_zone": "posixrules"}, "time_zone", "'posixrules'"),
    ],
)
def test_create_names_rejected_field(staff_api, changes, field, message):
    response = staff_api.post(TENANTS_URL, {**NEW_TENANT, **changes}, format="json")

    assert response.status_code == 400
    assert message in str(response.json()[field])
    assert not ProvisioningJob.objects.exists()


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("suspend", {"reason": "Unpaid invoice", "until": "2027-01-01"}, "until"),
        ("delete", {"confirm": "alpha", "skip_exports": True}, "skip_exports"),
    ],
)
def test_actions_reject_unknown_fields(staff_api, action, body, field):
    response = staff_api.post(f"{TENANTS_URL}alpha/{action}/", body, format="json")

    assert response.status_code == 400
    assert "Unknown field" in response.json()[field][0]
    assert Tenant.objects.get(schema_name="alpha").status == TenantStatus.ACTIVE


def test_update_rejects_localtime_zone(staff_api):
    response = staff_api.patch(f"{TENANTS_URL}alpha/", {"time_zone": "localtime"}, format="json")

    assert response.status_code == 400
    assert "'localtime'" in response.json()["time_zone"][0]
    assert Tenant.objects.get(schema_name="alpha").time_zone == "UTC"


def test_unknown_tenant_gets_404(staff_api):
    assert staff_api.get(f"{TENANTS_URL}nobody/").status_code == 404
    assert staff_api.get(f"{TENANTS_URL}public/").status_code == 404


def test_suspend_blocks_tenant_until_resumed(staff_api, alpha):
    connection.set_schema_to_public()
    token = access_token_for("alpha", admin_of("alpha"))
    tenant_api = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    tenant_api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    suspended = staff_api.post(f"{TENANTS_URL}alpha/suspend/", {"reason": "Invoice overdue"}, format="json")
    api_while_suspended = tenant_api.get("/api/v1/units/")
    login_while_suspended = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"]).post(
        "/api/v1/auth/token/", {"username": "admin", "password": ADMIN_PASSWORD}, format="json"
    )
    connection.set_schema_to_public()
    resumed = staff_api.post(f"{TENANTS_URL}alpha/resume/")
    api_after_resume = tenant_api.get("/api/v1/units/")

    assert suspended.status_code == 200
    assert suspended.json()["status"] == "suspended"
    assert suspended.json()["suspension_reason"] == "Invoice overdue"
    assert api_while_suspended.status_code == 403
    assert api_while_suspended.json()["code"] == "tenant_suspended"
    assert login_while_suspended.status_code == 403
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "active"
    assert api_after_resume.status_code == 200
    events = [detail["event"] for detail, _actor in lifecycle_events("alpha")]
    assert events[-2:] == ["suspended", "resumed"]


def test_suspend_needs_reason(staff_api):
    response = staff_api.post(f"{TENANTS_URL}alpha/suspend/", {"reason": "  "}, format="json")

    assert response.status_code == 400
    assert "reason" in response.json()
    assert Tenant.objects.get(schema_name="alpha").status == TenantStatus.ACTIVE


def test_suspend_twice_and_resume_active_get_409(staff_api):
    staff_api.post(f"{TENANTS_URL}beta/suspend/", {"reason": "Audit"}, format="json")

    again = staff_api.post(f"{TENANTS_URL}beta/suspend/", {"reason": "Audit"}, format="json")
    resume_active = staff_api.post(f"{TENANTS_URL}alpha/resume/")

    assert again.status_code == 409
    assert "suspended, not active" in again.json()["detail"]
    assert resume_active.status_code == 409
    assert "active, not suspended" in resume_active.json()["detail"]


# Export and deletion ----------------------------------------------------------------------------------------------


def bare_tenant(schema):
    """A tenant row with a small schema of its own, made without migrations so a test can drop it cheaply."""
    tenant = Tenant(schema_name=schema, name=schema.title())
    tenant.auto_create_schema = False
    tenant.save()
    Domain.objects.create(domain=f"{schema}.localhost", tenant=tenant, is_primary=True)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
        cursor.execute(f"CREATE TABLE {schema}.boilers (id integer)")
    return tenant


def test_export_returns_202_and_audits_request(staff_api, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = staff_api.post(f"{TENANTS_URL}alpha/export/")
    polled = staff_api.get(response["Location"])

    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    assert response.json()["requested_by"] == "platform:platform-staff"
    assert len(callbacks) == 1
    assert polled.status_code == 200
    assert polled.json()["schema_name"] == "alpha"
    detail, actor = lifecycle_events("alpha")[-1]
    assert detail == {"event": "export_requested", "export_id": response.json()["id"]}
    assert actor == "platform:platform-staff"


def test_delete_without_export_is_rejected(staff_api):
    bare_tenant("epsilon")

    response = staff_api.post(f"{TENANTS_URL}epsilon/delete/", {"confirm": "epsilon"}, format="json")

    assert response.status_code == 409
    assert "no completed export" in response.json()["detail"]
    assert Tenant.objects.filter(schema_name="epsilon").exists()
    assert schema_exists("epsilon")


def test_delete_needs_matching_confirmation(staff_api):
    bare_tenant("epsilon")

    response = staff_api.post(
        f"{TENANTS_URL}epsilon/delete/", {"confirm": "alpha", "skip_export": True}, format="json"
    )

    assert response.status_code == 409
    assert "does not match" in response.json()["detail"]
    assert schema_exists("epsilon")


def test_delete_with_skip_export_drops_schema(staff_api):
    bare_tenant("epsilon")

    response = staff_api.post(
        f"{TENANTS_URL}epsilon/delete/", {"confirm": "epsilon", "skip_export": True}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["event"] == "deleted"
    assert response.json()["actor"] == "platform:platform-staff"
    assert response.json()["detail"]["domains"] == ["epsilon.localhost"]
    assert not Tenant.objects.filter(schema_name="epsilon").exists()
    assert not schema_exists("epsilon")


def test_http_delete_method_is_not_allowed(staff_api):
    response = staff_api.delete(f"{TENANTS_URL}alpha/")

    assert response.status_code == 405
    assert Tenant.objects.filter(schema_name="alpha").exists()


# OpenAPI ---------------------------------------------------------------------------------------------------------


def test_openapi_schema_lists_platform_endpoints(staff_api):
    response = staff_api.get("/api/platform/schema/", {"format": "json"})

    assert response.status_code == 200
    paths = response.json()["paths"]
    expected = {
        "/api/platform/v1/tenants/": {"get", "post"},
        "/api/platform/v1/tenants/{schema_name}/": {"get", "patch"},
        "/api/platform/v1/tenants/{schema_name}/suspend/": {"post"},
        "/api/platform/v1/tenants/{schema_name}/resume/": {"post"},
        "/api/platform/v1/tenants/{schema_name}/export/": {"post"},
        "/api/platform/v1/tenants/{schema_name}/delete/": {"post"},
        "/api/platform/v1/provisioning-jobs/{id}/": {"get"},
        "/api/platform/v1/tenant-exports/{id}/": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
        for method in methods:
            assert paths[path][method]["tags"] == ["platform"], (path, method)
    assert "202" in paths["/api/platform/v1/tenants/"]["post"]["responses"]


def test_tenant_openapi_schema_has_no_platform_endpoints(alpha_api):
    response = alpha_api.get("/api/schema/", {"format": "json"})

    assert response.status_code == 200
    assert not [path for path in response.json()["paths"] if path.startswith("/api/platform/")]
