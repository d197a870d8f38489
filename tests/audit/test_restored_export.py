"""Audit exports of restored tenants verify offline, with the standalone chain.py, across every restore.

A restored tenant keeps its source's entries, which hash with the source
schema's name. These tests restore committed tenants (apps.tenants.backup)
outside the test transaction, because the tenant export reads through a
connection of its own, and drop them at the end.
"""

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

import apps.audit.chain
from apps.audit.chain import ExportInvalid, verify_export
from apps.audit.choices import AuditAction
from apps.audit.export_jobs import export_folder, start_export_job, write_export_job
from apps.audit.exports import build_manifest, iter_export
from apps.audit.models import AuditEntry
from apps.audit.services import Actor, record
from apps.tenants.backup import export_tenant, restore_tenant
from apps.tenants.backup_models import TenantExport, TenantLifecycleEvent
from apps.tenants.models import Tenant
from apps.tenants.services import provision_tenant
from tests.conftest import ADMIN_PASSWORD, access_token_for, admin_of

SOURCE, COPY, SECOND_COPY = "au_rst_src", "au_rst_copy", "au_rst_copy2"
OWN_SCHEMAS = (SOURCE, COPY, SECOND_COPY)


def _domain(schema):
    return f"{schema.replace('_', '-')}.localhost"


def _drop_own_tenants():
    connection.set_schema_to_public()
    for tenant in Tenant.objects.filter(schema_name__in=OWN_SCHEMAS):
        tenant.delete(force_drop=True)
    TenantExport.objects.filter(schema_name__in=OWN_SCHEMAS).delete()
    TenantLifecycleEvent.objects.filter(schema_name__in=OWN_SCHEMAS).delete()


def _record_steps(schema, *steps):
    with schema_context(schema):
        for step in steps:
            record(AuditAction.OBJECT_UPDATED, actor=Actor.system_job("tests"), detail={"step": step})


def _restore_points(schema):
    with schema_context(schema):
        return list(
            AuditEntry.objects.filter(action=AuditAction.TENANT_LIFECYCLE, detail__event="restored")
            .order_by("sequence").values_list("sequence", "detail__source_schema")
        )


@pytest.fixture(scope="module")
def restored(django_db_setup, django_db_blocker, tmp_path_factory):
    """SOURCE restored as COPY, COPY restored as SECOND_COPY, each with entries before and after its restore."""
    folder = tmp_path_factory.mktemp("tenant-archives")
    with django_db_blocker.unblock():
        _drop_own_tenants()
        source = provision_tenant(
            schema_name=SOURCE, name="Restore source", domain=_domain(SOURCE),
            admin_username="admin", admin_password=ADMIN_PASSWORD,
        )
        _record_steps(SOURCE, "source 1", "source 2")
        export_tenant(source, folder / f"{SOURCE}.zip")
        copy = restore_tenant(folder / f"{SOURCE}.zip", schema_name=COPY, domain=_domain(COPY))
        _record_steps(COPY, "copy 1")
        export_tenant(copy, folder / f"{COPY}.zip")
        restore_tenant(folder / f"{COPY}.zip", schema_name=SECOND_COPY, domain=_domain(SECOND_COPY))
        _record_steps(SECOND_COPY, "second copy 1")
        connection.set_schema_to_public()
        yield
        _drop_own_tenants()


@pytest.fixture
def unblocked(restored, django_db_blocker):
    with django_db_blocker.unblock():
        yield
    connection.set_schema_to_public()


def _write_export(schema, folder, export_format="csv", *, filters=None):
    """Write an export and its manifest as the API produces them; return both paths."""
    with schema_context(schema):
        through = AuditEntry.objects.order_by("-sequence").values_list("sequence", flat=True).first()
        queryset = AuditEntry.objects.filter(sequence__lte=through)
        if filters:
            queryset = queryset.filter(action__in=filters["action"])
        export_path = folder / f"{schema}.{export_format}"
        export_path.write_bytes(b"".join(iter_export(schema, queryset, export_format)))
        manifest = build_manifest(
            schema, queryset, export_format, filters=filters or {}, through=through,
            chain_head=AuditEntry.objects.get(sequence=through),
        )
    manifest_path = folder / f"{schema}.{export_format}.manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    return export_path, manifest_path


def _run_standalone_verifier(folder, export_path, manifest_path):
    """Run chain.py copied alone into `folder`, the way docs/audit.md describes for auditors."""
    verifier = folder / "chain.py"
    shutil.copyfile(apps.audit.chain.__file__, verifier)
    return subprocess.run(
        [sys.executable, "-I", str(verifier), str(export_path), str(manifest_path)],
        capture_output=True, text=True, cwd=folder, timeout=60, check=False,
    )


def _csv_tenants(export_path):
    with open(export_path, newline="", encoding="utf-8") as export:
        return {int(row["sequence"]): row["tenant"] for row in csv.DictReader(export)}


@pytest.mark.parametrize("export_format", ["csv", "json"])
def test_api_export_of_restored_tenant_verifies(unblocked, tmp_path, export_format):
    client = APIClient(HTTP_HOST=_domain(COPY))
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for(COPY, admin_of(COPY))}")

    response = client.get(f"/api/v1/audit/export/?format={export_format}")
    assert response.status_code == 200
    export_path = tmp_path / f"audit.{export_format}"
    export_path.write_bytes(b"".join(response.streaming_content))
    manifest_url = response["Link"].split(">")[0].lstrip("<")
    manifest_response = client.get(manifest_url)
    assert manifest_response.status_code == 200
    manifest_path = tmp_path / "audit.manifest.json"
    manifest_path.write_bytes(manifest_response.content)
    result = _run_standalone_verifier(tmp_path, export_path, manifest_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK: {manifest_response.json()['entry_count']} entries of tenant {COPY}")
    assert f"restored from {SOURCE} at entry " in result.stdout
    assert manifest_response.json()["contiguous"] is True


def test_export_names_tenant_per_entry(unblocked, tmp_path):
    (restore_sequence, _source), = _restore_points(COPY)

    export_path, _manifest_path = _write_export(COPY, tmp_path)
    tenants = _csv_tenants(export_path)

    assert {tenants[sequence] for sequence in tenants if sequence < restore_sequence} == {SOURCE}
    assert {tenants[sequence] for sequence in tenants if sequence >= restore_sequence} == {COPY}


@pytest.mark.parametrize("export_format", ["csv", "json"])
def test_export_after_two_restores_verifies(unblocked, tmp_path, export_format):
    restores = _restore_points(SECOND_COPY)

    export_path, manifest_path = _write_export(SECOND_COPY, tmp_path, export_format)
    result = _run_standalone_verifier(tmp_path, export_path, manifest_path)

    assert [source for _sequence, source in restores] == [SOURCE, COPY]
    assert result.returncode == 0, result.stderr
    assert f"restored from {SOURCE} at entry {restores[0][0]}" in result.stdout
    assert f"restored from {COPY} at entry {restores[1][0]}" in result.stdout


def test_filtered_export_spanning_restore_verifies(unblocked, tmp_path):
    filters = {"action": [AuditAction.OBJECT_UPDATED.value]}

    export_path, manifest_path = _write_export(SECOND_COPY, tmp_path, filters=filters)
    tenants = set(_csv_tenants(export_path).values())

    assert verify_export(export_path, manifest_path).startswith("OK: 4 entries of tenant au_rst_copy2")
    assert tenants == {SOURCE, COPY, SECOND_COPY}


def test_export_job_of_restored_tenant_verifies(unblocked, settings, tmp_path):
    settings.AUDIT_EXPORT_DIR = str(tmp_path)
    with schema_context(COPY):
        job = start_export_job(actor=admin_of(COPY), export_format="json", filters={})
        job = write_export_job(job.pk)
        folder = export_folder(COPY)

    assert job.status == "done", job.error
    assert verify_export(folder / job.file_name, folder / job.manifest_name).startswith("OK: ")


def test_entry_renamed_to_new_tenant_fails(unblocked, tmp_path):
    export_path, manifest_path = _write_export(COPY, tmp_path)
    text = export_path.read_text(encoding="utf-8")
    # Entry 1 was recorded in SOURCE, so a file that claims it for COPY must not verify.
    export_path.write_text(text.replace(f",{SOURCE},", f",{COPY},", 1), encoding="utf-8")
    _fix_file_hash(export_path, manifest_path)

    with pytest.raises(ExportInvalid, match=f"Entry 1 belongs to tenant '{COPY}', not '{SOURCE}'"):
        verify_export(export_path, manifest_path)


def test_manifest_without_restores_fails(unblocked, tmp_path):
    export_path, manifest_path = _write_export(COPY, tmp_path)
    manifest = json.loads(manifest_path.read_text())
    manifest["restores"] = []
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(ExportInvalid, match=f"Entry 1 belongs to tenant '{SOURCE}', not '{COPY}'"):
        verify_export(export_path, manifest_path)


def test_manifest_with_moved_restore_fails(unblocked, tmp_path):
    (restore_sequence, _source), = _restore_points(COPY)
    export_path, manifest_path = _write_export(COPY, tmp_path, filters={"action": ["tenant.lifecycle"]})
    manifest = json.loads(manifest_path.read_text())
    manifest["restores"] = [{"sequence": restore_sequence + 1, "source_schema": SOURCE}]
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(ExportInvalid, match=f"Entry {restore_sequence} records a restore from schema '{SOURCE}'"):
        verify_export(export_path, manifest_path)


def test_malformed_restores_rejected(unblocked, tmp_path):
    export_path, manifest_path = _write_export(COPY, tmp_path)
    manifest = json.loads(manifest_path.read_text())
    manifest["restores"] = [{"sequence": "first"}]
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(ExportInvalid, match="restores .* is malformed"):
        verify_export(export_path, manifest_path)


def _fix_file_hash(export_path, manifest_path):
    """Give the manifest the SHA-256 of the edited file, as someone who edits both would."""
    manifest = json.loads(manifest_path.read_text())
    manifest["file_sha256"] = hashlib.sha256(Path(export_path).read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
