"""Export and delete pages of the platform admin."""

from django_tenants.utils import schema_exists

from apps.tenants.backup_models import ExportStatus, TenantExport, TenantLifecycleEvent
from apps.tenants.backup_tasks import export_tenant_task
from apps.tenants.models import Tenant
from apps.tenants.services import provision_tenant
from tests.conftest import ADMIN_PASSWORD
from tests.tenants.test_admin import platform_client  # noqa: F401 (fixture used here)


def test_tenant_page_links_export_and_delete(platform_client):
    alpha = Tenant.objects.get(schema_name="alpha")

    response = platform_client.get(f"/admin/tenants/tenant/{alpha.pk}/change/")

    assert response.status_code == 200
    assert f"/admin/tenants/tenant/{alpha.pk}/export/" in response.text
    assert f"/admin/tenants/tenant/{alpha.pk}/delete-tenant/" in response.text
    assert "no export yet" in response.text


def test_export_page_queues_export_with_progress(platform_client, settings, tmp_path):
    settings.TENANT_EXPORT_DIR = tmp_path
    alpha = Tenant.objects.get(schema_name="alpha")

    response = platform_client.post(f"/admin/tenants/tenant/{alpha.pk}/export/")
    export = TenantExport.objects.get(tenant=alpha)

    assert response.status_code == 302
    assert export.status == ExportStatus.PENDING
    assert export.requested_by == "platform:platform"

    export_tenant_task(export.pk)
    export.refresh_from_db()
    listing = platform_client.get(f"/admin/tenants/tenantexport/?tenant__id__exact={alpha.pk}")

    assert export.status == ExportStatus.DONE
    assert export.file_path.startswith(str(tmp_path))
    assert '<progress value="100" max="100"></progress> 100%' in listing.text
    assert export.checksum in listing.text


def test_standard_delete_is_forbidden(platform_client):
    alpha = Tenant.objects.get(schema_name="alpha")

    response = platform_client.post(f"/admin/tenants/tenant/{alpha.pk}/delete/", {"post": "yes"})

    assert response.status_code == 403
    assert schema_exists("alpha")


def test_delete_page_rejects_then_skips_export(platform_client):
    tenant = provision_tenant(
        schema_name="bk_adm", name="Bk Adm", domain="bk-adm.localhost", admin_username="admin",
        admin_password=ADMIN_PASSWORD,
    )
    url = f"/admin/tenants/tenant/{tenant.pk}/delete-tenant/"

    page = platform_client.get(url)
    rejected = platform_client.post(url, {"confirm": "bk_adm"})

    assert "has no completed export" in page.text
    assert rejected.status_code == 200
    assert "was not deleted" in rejected.text
    assert schema_exists("bk_adm")

    deleted = platform_client.post(url, {"confirm": "bk_adm", "skip_export": "on"})

    assert deleted.status_code == 302
    assert not schema_exists("bk_adm")
    assert not Tenant.objects.filter(schema_name="bk_adm").exists()
    event = TenantLifecycleEvent.objects.get(schema_name="bk_adm", event="deleted")
    assert event.actor == "platform:platform"
    assert event.detail["skip_export"] is True
