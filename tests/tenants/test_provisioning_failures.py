"""Provisioning through the platform API that fails part-way: no schema of the tenant remains, the job shows why.

A receiver on ProvisioningJob runs a conflicting change when the job
reaches a given step, the way another client or operator could at that
moment.
"""

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models.signals import post_save
from django_tenants.utils import schema_exists

from apps.tenants.choices import ProvisioningStatus
from apps.tenants.jobs import run_provisioning_job
from apps.tenants.models import Domain, ProvisioningJob, Tenant
from tests.tenants.test_platform_api import NEW_TENANT, TENANTS_URL, platform, platform_client  # noqa: F401


@pytest.fixture
def at_step():
    """Return a function that runs ``action`` once, when a saved ProvisioningJob reaches ``step``."""

    def register(step, action):
        def run(sender, instance, **kwargs):
            if instance.step == step and not getattr(run, "done", False):
                run.done = True
                # The test runs in one transaction, unlike a worker. The migrations' deferred foreign key checks
                # would still be pending there and block the DROP SCHEMA of a failed provisioning, so run them now.
                with connection.cursor() as cursor:
                    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                action()

        post_save.connect(run, sender=ProvisioningJob, dispatch_uid="test-at-step", weak=False)

    yield register
    post_save.disconnect(sender=ProvisioningJob, dispatch_uid="test-at-step")


def request_gamma(platform, django_capture_on_commit_callbacks, **changes):
    client = platform_client(platform["staff"])
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(TENANTS_URL, {**NEW_TENANT, **changes}, format="json")
    connection.set_schema_to_public()
    assert response.status_code == 202, response.content
    return response.json()["id"]


def create_foreign_schema():
    with connection.cursor() as cursor:
        cursor.execute("CREATE SCHEMA gamma")
        cursor.execute("CREATE TABLE gamma.foreign_data (id integer)")


def foreign_table_exists():
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('gamma.foreign_data') IS NOT NULL")
        return cursor.fetchone()[0]


def test_schema_created_after_request_fails_job_and_stays(platform, django_capture_on_commit_callbacks):
    job_id = request_gamma(platform, django_capture_on_commit_callbacks)
    create_foreign_schema()

    job = run_provisioning_job(job_id)

    assert job.status == ProvisioningStatus.FAILED
    assert "Schema 'gamma' already exists in the database but belongs to no tenant" in job.error
    assert not Tenant.objects.filter(schema_name="gamma").exists()
    # The schema is not the tenant's, so it is left as it was.
    assert foreign_table_exists()


def test_schema_clash_at_creation_keeps_foreign_schema(platform, django_capture_on_commit_callbacks, at_step):
    job_id = request_gamma(platform, django_capture_on_commit_callbacks)
    # Someone creates the schema after the last check and before CREATE SCHEMA.
    at_step("schema", create_foreign_schema)

    job = run_provisioning_job(job_id)

    assert job.status == ProvisioningStatus.FAILED
    assert "was created in the database by someone else" in job.error
    assert job.step == "schema"
    assert not Tenant.objects.filter(schema_name="gamma").exists()
    assert foreign_table_exists()
    # The admin was not created in the public schema's user table, where the search path would have put it.
    assert not get_user_model().objects.filter(username=NEW_TENANT["admin_username"]).exists()


def test_domain_taken_mid_way_drops_schema(platform, django_capture_on_commit_callbacks, at_step):
    job_id = request_gamma(platform, django_capture_on_commit_callbacks)
    beta = Tenant.objects.get(schema_name="beta")
    at_step("domain", lambda: Domain.objects.create(domain="gamma.localhost", tenant=beta, is_primary=False))

    job = run_provisioning_job(job_id)

    assert job.status == ProvisioningStatus.FAILED
    assert job.step == "domain"
    assert "Domain 'gamma.localhost' was taken by another tenant" in job.error
    assert not Tenant.objects.filter(schema_name="gamma").exists()
    assert not schema_exists("gamma")
    assert Domain.objects.get(domain="gamma.localhost").tenant == beta


def test_admin_rejected_mid_way_drops_schema(platform, django_capture_on_commit_callbacks, at_step):
    job_id = request_gamma(platform, django_capture_on_commit_callbacks)
    # The operator lowers the user quota while the schema is being migrated.
    at_step("admin", lambda: Tenant.objects.filter(schema_name="gamma").update(max_users=0))

    job = run_provisioning_job(job_id)

    assert job.status == ProvisioningStatus.FAILED
    assert job.step == "admin"
    assert "Quota max_users exceeded" in job.error
    assert not Tenant.objects.filter(schema_name="gamma").exists()
    assert not Domain.objects.filter(domain="gamma.localhost").exists()
    assert not schema_exists("gamma")


def test_stored_job_with_invalid_admin_fails_before_schema(platform):
    job = ProvisioningJob.objects.create(
        schema_name="gamma", name="Gamma", domain="gamma.localhost", admin_username="bad name!",
        admin_password_hash="md5$x$y", requested_by="platform-staff",
    )

    result = run_provisioning_job(job.pk)

    assert result.status == ProvisioningStatus.FAILED
    assert "Admin user name 'bad name!' is invalid" in result.error
    assert not schema_exists("gamma")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"admin_username": "bad name!"}, "admin_username"),
        ({"settings": {"max_users": 0}}, "max_users"),
    ],
)
def test_create_rejects_admin_that_cannot_exist(platform, changes, field):
    response = platform_client(platform["staff"]).post(TENANTS_URL, {**NEW_TENANT, **changes}, format="json")

    assert response.status_code == 400
    assert field in response.json()
    assert not ProvisioningJob.objects.exists()


def test_create_rejects_existing_foreign_schema_with_409(platform):
    create_foreign_schema()

    response = platform_client(platform["staff"]).post(TENANTS_URL, NEW_TENANT, format="json")

    assert response.status_code == 409
    assert "belongs to no tenant" in response.json()["detail"]
    assert foreign_table_exists()
