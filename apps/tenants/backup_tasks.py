"""Celery task that carries out a tenant export requested in the platform admin."""

import logging
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from .backup import export_tenant
from .backup_models import ExportStatus, TenantExport

logger = logging.getLogger(__name__)


def export_path_for(export):
    """Return a new archive path in TENANT_EXPORT_DIR, e.g. acme-20261204T2301Z-7.zip."""
    directory = Path(settings.TENANT_EXPORT_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{export.schema_name}-{timezone.now():%Y%m%dT%H%MZ}-{export.pk}.zip"


# The hard limit stays below the broker's visibility timeout (7200 s), or a long export is delivered twice.
# At the measured ~160k readings/s that is about a billion readings; larger tenants use `manage.py export_tenant`.
@shared_task(name="tenants.export", soft_time_limit=6600, time_limit=6900)
def export_tenant_task(export_id):
    """Run a pending TenantExport; sent from and run in the public schema."""
    export = TenantExport.objects.select_related("tenant").filter(pk=export_id, status=ExportStatus.PENDING).first()
    if export is None or export.tenant is None:
        logger.warning("Tenant export %s is not pending or its tenant is gone; nothing to do", export_id)
        return None
    # A worker killed mid-export leaves the export "running" and its .partial file behind, and a redelivered task
    # finds it not pending; tenants.recover_stuck_jobs fails it and deletes the file after the time limit.
    export_tenant(export.tenant, export_path_for(export), requested_by=export.requested_by, export=export)
    return export.status
