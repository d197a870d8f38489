"""Retention: archive a tenant's old audit entries to a file with a manifest, then drop them, in the chain.

The archive has the export format and a manifest, so it verifies offline
like any export (`python chain.py ARCHIVE MANIFEST`). The drop is recorded
as an `audit.retention_dropped` entry that carries the archive's SHA-256 and
the hash of the last dropped entry, so verify_audit_chain accepts a chain
that now starts after it. The append-only trigger lets a DELETE through only
inside this transaction: it requires the transaction-local setting
`thermacore.audit_retention_through` and a retention entry for exactly that
sequence (see migration 0004).
"""

import hashlib
import json
import logging
import os
from datetime import timedelta
from pathlib import Path

from django.conf import settings as django_settings
from django.db import connection, transaction
from django.utils import timezone

from .chain import canonical_time
from .choices import AuditAction
from .exports import ExportFormat, build_manifest, iter_export
from .models import AuditEntry, AuditSettings
from .services import Actor, lock_chain, record

logger = logging.getLogger(__name__)

RETENTION_JOB = "audit.apply_retention"
RETENTION_SETTING = "thermacore.audit_retention_through"


def apply_retention(*, now=None, directory=None, export_format=ExportFormat.JSON):
    """Archive and drop the current tenant's entries older than its retention_days; return the drop entry or None."""
    retention_days = AuditSettings.current().retention_days
    if retention_days is None:
        return None
    cutoff = (now or timezone.now()) - timedelta(days=retention_days)
    return archive_and_drop(cutoff=cutoff, directory=directory, export_format=export_format)


def archive_and_drop(*, cutoff, directory=None, export_format=ExportFormat.JSON):
    """Archive the entries before `cutoff` to DIRECTORY/<schema>/, drop them and record the drop.

    Returns the `audit.retention_dropped` entry, or None when no entry is
    older than the cutoff. Sequences grow with time because entries are
    appended under the chain lock, so the entries before the cutoff are a
    prefix of the chain.
    """
    if export_format not in ExportFormat.ALL:
        raise ValueError(f"Archive format {export_format!r} is invalid; use one of {', '.join(ExportFormat.ALL)}.")
    schema = connection.schema_name
    folder = Path(directory or django_settings.AUDIT_ARCHIVE_DIR) / schema
    folder.mkdir(parents=True, exist_ok=True)

    with transaction.atomic():
        lock_chain(schema)
        doomed = AuditEntry.objects.filter(time__lt=cutoff)
        through = doomed.order_by("-sequence").values_list("sequence", flat=True).first()
        if through is None:
            return None
        doomed = AuditEntry.objects.filter(sequence__lte=through)
        first = doomed.order_by("sequence").first()
        last = doomed.get(sequence=through)

        stem = f"audit-{schema}-{first.sequence}-{through}"
        archive_path = folder / f"{stem}.{export_format}"
        manifest_path = folder / f"{stem}.manifest.json"
        try:
            archive_sha256 = _write_archive(schema, doomed, export_format, archive_path)
            manifest = build_manifest(schema, doomed, export_format, filters={}, through=through, chain_head=last)
            # Entries before `first` were dropped by an earlier run; the archive continues that chain.
            manifest["chain_start"] = (
                {"sequence": first.sequence - 1, "hash": first.previous_hash} if first.sequence > 1 else None
            )
            manifest["retention_cutoff"] = canonical_time(cutoff)
            if manifest["file_sha256"] != archive_sha256:
                raise RuntimeError(
                    f"Archive {archive_path} hashes to {archive_sha256}, but a second run of the export to "
                    f"{manifest['file_sha256']}; entries changed while archiving, so nothing was dropped."
                )
            manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
            manifest_path.write_bytes(manifest_bytes)

            dropped_count = doomed.count()
            entry = record(
                AuditAction.RETENTION_DROPPED,
                actor=Actor.system_job(RETENTION_JOB),
                detail={
                    "first_sequence": first.sequence,
                    "through_sequence": through,
                    "dropped_count": dropped_count,
                    "last_dropped_hash": last.hash,
                    "cutoff": canonical_time(cutoff),
                    "archive_file": archive_path.name,
                    "archive_sha256": archive_sha256,
                    "manifest_file": manifest_path.name,
                    "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
                },
            )
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config(%s, %s, true)", [RETENTION_SETTING, str(through)])
                cursor.execute("DELETE FROM audit_auditentry WHERE sequence <= %s", [through])
                cursor.execute("SELECT set_config(%s, '', true)", [RETENTION_SETTING])
        except BaseException:
            # The transaction rolls back, so the files would describe entries that are still there.
            for path in (archive_path, manifest_path):
                path.unlink(missing_ok=True)
            raise

    logger.info(
        "Schema %s: archived and dropped audit entries %s to %s (%s entries) to %s; drop recorded as entry %s",
        schema, first.sequence, through, dropped_count, archive_path, entry.sequence,
    )
    return entry


def _write_archive(schema, queryset, export_format, path):
    """Write the export to `path` through a temporary file and return its SHA-256."""
    digest = hashlib.sha256()
    partial_path = path.with_name(path.name + ".partial")
    with open(partial_path, "wb") as archive:
        for chunk in iter_export(schema, queryset, export_format):
            digest.update(chunk)
            archive.write(chunk)
        archive.flush()
        os.fsync(archive.fileno())
    partial_path.replace(path)
    return digest.hexdigest()
