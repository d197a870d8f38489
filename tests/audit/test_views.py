"""The audit API: entry list, export and manifest, with filters and permissions."""

import hashlib
import json
import subprocess
import sys
import uuid
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import HttpCommunicator
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

from apps.audit import chain
from apps.audit.chain import ExportInvalid, verify_export
from apps.audit.choices import ActorType, AuditAction
from apps.audit.exports import BATCH_SIZE, aiter_export, iter_export
from apps.audit.models import AuditEntry
from apps.audit.services import Actor, record
from tests.audit.conftest import COMMITTED_DOMAIN, COMMITTED_SCHEMA, chain_head, entries_after
from tests.conftest import TENANT_DOMAINS, access_token_for, admin_of
from thermacore.asgi import application


@pytest.fixture
def entries(alpha_api, head):
    """Six entries of mixed actions and objects on alpha's chain, recorded in this order."""
    admin = admin_of("alpha")
    job = Actor.system_job("telemetry.ensure_partitions")
    return [
        record(AuditAction.LOGIN, actor=admin),
        record(AuditAction.OBJECT_CREATED, actor=admin, changes={"name": [None, "Boiler 1"]},
               detail={"note": "größer – 30 °C"}),
        record(AuditAction.OBJECT_UPDATED, actor=admin, changes={"status": ["in_service", "maintenance"]}),
        record(AuditAction.TENANT_LIFECYCLE, actor=job, detail={"partition": "2026-01-05", "ratio": 0.1}),
        record(AuditAction.OBJECT_DELETED, actor=admin, changes={"name": ["Boiler 1", None]}),
        record(AuditAction.LOGOUT, actor=admin),
    ]


def body(response):
    return b"".join(response.streaming_content)


def download(client, tmp_path, query):
    """Download an export and its manifest (from the Link header) into tmp_path; return both paths."""
    export = client.get(f"/api/v1/audit/export/?{query}")
    assert export.status_code == 200, export.content
    manifest_url = export["Link"].split(";")[0].strip("<>")
    manifest = client.get(manifest_url)
    assert manifest.status_code == 200, manifest.content
    export_path = tmp_path / "export"
    manifest_path = tmp_path / "manifest.json"
    export_path.write_bytes(body(export))
    manifest_path.write_bytes(manifest.content)
    return export_path, manifest_path


def test_list_returns_entries_newest_first(entries, alpha_api):
    response = alpha_api.get("/api/v1/audit/entries/")

    assert response.status_code == 200
    sequences = [item["sequence"] for item in response.data["results"]]
    # The chain also contains the entries written when alpha was provisioned.
    assert sequences == list(AuditEntry.objects.order_by("-sequence").values_list("sequence", flat=True))
    assert sequences[: len(entries)] == sorted((entry.sequence for entry in entries), reverse=True)
    assert response.data["results"][0]["hash"] == entries[-1].hash


def test_list_filters_by_action_actor_and_object(entries, alpha_api):
    created, deleted = entries[1], entries[4]

    by_action = alpha_api.get("/api/v1/audit/entries/?action=object.created&action=object.deleted")
    by_actor = alpha_api.get("/api/v1/audit/entries/?actor_type=system_job&actor_id=telemetry.ensure_partitions")
    by_outcome = alpha_api.get("/api/v1/audit/entries/?outcome=failure")

    assert [item["sequence"] for item in by_action.data["results"]] == [deleted.sequence, created.sequence]
    assert [item["sequence"] for item in by_actor.data["results"]] == [entries[3].sequence]
    assert by_outcome.data["results"] == []


def test_list_filters_by_object(alpha_api, head):
    site_id = alpha_api.post("/api/v1/sites/", {"name": "Filtered"}, format="json").data["id"]
    alpha_api.patch(f"/api/v1/sites/{site_id}/", {"address": "Elm"}, format="json")
    alpha_api.post("/api/v1/sites/", {"name": "Other"}, format="json")

    response = alpha_api.get(f"/api/v1/audit/entries/?object_type=units.site&object_id={site_id}")

    assert [item["action"] for item in response.data["results"]] == ["object.updated", "object.created"]


def test_list_filters_by_time_range(entries, alpha_api):
    middle = entries[3].time
    since = middle.isoformat().replace("+00:00", "Z")

    response = alpha_api.get("/api/v1/audit/entries/", {"since": since})

    assert [item["sequence"] for item in response.data["results"]] == [e.sequence for e in reversed(entries[3:])]


def test_list_pages_with_cursor(entries, alpha_api):
    first = alpha_api.get(f"/api/v1/audit/entries/?page_size=4&since={entries[0].time.isoformat()}".replace("+", "%2B"))
    second = alpha_api.get(first.data["next"])

    seen = [item["sequence"] for item in first.data["results"] + second.data["results"]]
    assert seen == sorted((entry.sequence for entry in entries), reverse=True)
    assert second.data["next"] is None


def test_list_rejects_unknown_filter(entries, alpha_api):
    response = alpha_api.get("/api/v1/audit/entries/?actor=admin")

    assert response.status_code == 400
    assert "actor" in response.data
    assert "actor_name" in str(response.data["actor"])


def test_list_rejects_invalid_time(entries, alpha_api):
    response = alpha_api.get("/api/v1/audit/entries/?since=yesterday")

    assert response.status_code == 400
    assert "since" in response.data


def test_reader_without_permission_is_denied(alpha):
    user = get_user_model().objects.create_user(username="viewer1", password="Viewer-pass-4711")
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', user)}")

    responses = [client.get(url) for url in (
        "/api/v1/audit/entries/", "/api/v1/audit/export/?format=csv", "/api/v1/audit/export/manifest/?format=csv&through=0",
    )]

    assert [response.status_code for response in responses] == [403, 403, 403]


def test_anonymous_reader_is_rejected(alpha):
    response = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"]).get("/api/v1/audit/entries/")

    assert response.status_code == 401


def test_csv_export_streams_chain_in_order(entries, alpha_api):
    response = alpha_api.get("/api/v1/audit/export/?format=csv")

    lines = body(response).decode().splitlines()
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["X-Audit-Through"] == str(entries[-1].sequence)
    assert lines[0].startswith("sequence,time,tenant,actor_type")
    assert len(lines) == 1 + entries[-1].sequence
    assert lines[-1].endswith(entries[-1].hash)


def test_export_is_audited(entries, alpha_api):
    alpha_api.get("/api/v1/audit/export/?format=json&action=auth.login", HTTP_X_REQUEST_ID=str(uuid.uuid4()))

    [entry] = entries_after(entries[-1].sequence)
    assert entry.action == AuditAction.AUDIT_EXPORTED
    assert (entry.actor_type, entry.actor_name) == (ActorType.USER, "admin")
    assert entry.detail == {"format": "json", "filters": {"action": ["auth.login"]}, "through": entries[-1].sequence}


def test_export_excludes_its_own_entry(entries, alpha_api):
    response = alpha_api.get("/api/v1/audit/export/?format=json")

    exported = json.loads(body(response))
    assert [item["sequence"] for item in exported] == list(range(1, entries[-1].sequence + 1))
    assert chain_head() == entries[-1].sequence + 1


def test_export_rejects_unknown_format(entries, alpha_api):
    response = alpha_api.get("/api/v1/audit/export/?format=xlsx")

    assert response.status_code == 400
    assert "xlsx" in str(response.data["format"])
    assert entries_after(entries[-1].sequence) == []


def test_export_rejects_through_beyond_head(entries, alpha_api):
    response = alpha_api.get(f"/api/v1/audit/export/?format=csv&through={entries[-1].sequence + 50}")

    assert response.status_code == 400
    assert f"ends at entry {entries[-1].sequence}" in str(response.data["through"])


def test_manifest_requires_through(entries, alpha_api):
    response = alpha_api.get("/api/v1/audit/export/manifest/?format=csv")

    assert response.status_code == 400
    assert "X-Audit-Through" in str(response.data["through"])


@pytest.mark.parametrize("export_format", ["csv", "json"])
def test_full_export_verifies_offline(entries, alpha_api, tmp_path, export_format):
    export_path, manifest_path = download(alpha_api, tmp_path, f"format={export_format}")

    summary = verify_export(export_path, manifest_path)

    manifest = json.loads(manifest_path.read_text())
    assert summary.startswith(f"OK: {entries[-1].sequence} entries of tenant alpha")
    assert manifest["contiguous"] is True
    assert manifest["first_entry"]["sequence"] == 1
    assert manifest["last_entry"] == {"sequence": entries[-1].sequence, "hash": entries[-1].hash}
    assert manifest["chain_head"] == manifest["last_entry"]


@pytest.mark.parametrize("export_format", ["csv", "json"])
def test_filtered_export_verifies_offline(entries, alpha_api, tmp_path, export_format):
    export_path, manifest_path = download(
        alpha_api, tmp_path, f"format={export_format}&action=object.created&action=object.deleted"
    )

    summary = verify_export(export_path, manifest_path)

    manifest = json.loads(manifest_path.read_text())
    assert summary.startswith("OK: 2 entries")
    assert manifest["contiguous"] is False
    assert manifest["filters"] == {"action": ["object.created", "object.deleted"]}


def test_export_with_later_entries_still_matches_manifest(entries, alpha_api, tmp_path):
    export = alpha_api.get("/api/v1/audit/export/?format=csv")
    record(AuditAction.LOGIN, actor=admin_of("alpha"))
    (tmp_path / "export.csv").write_bytes(body(export))
    manifest = alpha_api.get(export["Link"].split(";")[0].strip("<>"))
    (tmp_path / "manifest.json").write_bytes(manifest.content)

    assert verify_export(tmp_path / "export.csv", tmp_path / "manifest.json").startswith("OK")


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        (b"auth.logout", b"auth.logins", "SHA-256"),
        (b"\r\n", b"\n", "SHA-256"),
    ],
)
def test_changed_export_fails_offline_verification(entries, alpha_api, tmp_path, old, new, reason):
    export_path, manifest_path = download(alpha_api, tmp_path, "format=csv")
    export_path.write_bytes(export_path.read_bytes().replace(old, new))

    with pytest.raises(CommandError, match=reason):
        call_command("verify_audit_export", str(export_path), str(manifest_path))


def test_forged_manifest_hash_fails_chain_check(entries, alpha_api, tmp_path):
    export_path, manifest_path = download(alpha_api, tmp_path, "format=csv")
    lines = export_path.read_bytes().splitlines(keepends=True)
    del lines[3]
    export_path.write_bytes(b"".join(lines))
    # A forger who also edits the manifest's file hash is stopped by the chain itself.
    manifest = json.loads(manifest_path.read_text())
    manifest["file_sha256"] = hashlib.sha256(export_path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(CommandError, match="Entries 3 to 3 are missing"):
        call_command("verify_audit_export", str(export_path), str(manifest_path))


def test_verify_export_command_prints_summary(entries, alpha_api, tmp_path, capsys):
    export_path, manifest_path = download(alpha_api, tmp_path, "format=json")

    call_command("verify_audit_export", str(export_path), str(manifest_path))

    assert capsys.readouterr().out.startswith(f"OK: {entries[-1].sequence} entries")


def test_export_streams_in_batches(alpha, head):
    job = Actor.system_job("bulk")
    for number in range(BATCH_SIZE + 5):
        record(AuditAction.TENANT_LIFECYCLE, actor=job, detail={"number": number})

    chunks = list(iter_export("alpha", AuditEntry.objects.all(), "csv"))

    # Header, two batches of entries, and the empty end marker.
    assert len(chunks) == 4
    assert chunks[1].count(b"\r\n") == BATCH_SIZE


def test_async_export_yields_same_bytes(entries):
    async def collect():
        return [chunk async for chunk in aiter_export("alpha", AuditEntry.objects.all(), "json")]

    asynchronous = async_to_sync(collect)()

    assert b"".join(asynchronous) == b"".join(iter_export("alpha", AuditEntry.objects.all(), "json"))


def test_time_filter_with_offset(entries, alpha_api):
    later = (entries[-1].time + timedelta(hours=1)).astimezone(timezone(timedelta(hours=2)))

    response = alpha_api.get("/api/v1/audit/entries/", {"until": later.isoformat()})

    assert len(response.data["results"]) == entries[-1].sequence


def test_entries_store_time_in_utc(entries):
    assert entries[0].time.tzinfo is not None
    assert entries[0].time <= datetime.now(timezone.utc)


def test_malformed_export_row_is_reported(entries, alpha_api, tmp_path):
    export_path, manifest_path = download(alpha_api, tmp_path, "format=csv")
    export_path.write_bytes(export_path.read_bytes().replace(b',{},', b',{not json},', 1))
    manifest = json.loads(manifest_path.read_text())
    manifest["file_sha256"] = hashlib.sha256(export_path.read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(ExportInvalid, match="is malformed"):
        verify_export(export_path, manifest_path)


def test_chain_module_verifies_without_django(entries, alpha_api, tmp_path):
    export_path, manifest_path = download(alpha_api, tmp_path, "format=json")
    standalone = tmp_path / "chain.py"
    standalone.write_text(Path(chain.__file__).read_text())

    # -S keeps site-packages (and so Django) out of reach.
    result = subprocess.run(
        [sys.executable, "-S", str(standalone), str(export_path), str(manifest_path)],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"OK: {entries[-1].sequence} entries")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_asgi_export_streams_in_chunks(committed_tenant):
    def arrange():
        with schema_context(COMMITTED_SCHEMA):
            admin = get_user_model().objects.get(username="admin")
            for number in range(BATCH_SIZE + 2):
                record(AuditAction.TENANT_LIFECYCLE, actor=Actor.system_job("bulk"), detail={"number": number})
            expected = b"".join(iter_export(COMMITTED_SCHEMA, AuditEntry.objects.all(), "csv"))
        return access_token_for(COMMITTED_SCHEMA, admin), expected

    token, expected = await sync_to_async(arrange)()
    communicator = HttpCommunicator(
        application, "GET", "/api/v1/audit/export/?format=csv",
        headers=[(b"host", COMMITTED_DOMAIN.encode()), (b"authorization", f"Bearer {token}".encode())],
    )

    # Django warns when it has to read a synchronous iterator into a list to serve it over ASGI.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(timeout=30)
        bodies = []
        while True:
            message = await communicator.receive_output(timeout=30)
            bodies.append(message.get("body", b""))
            if not message.get("more_body", False):
                break

    assert start["status"] == 200
    assert not [warning for warning in caught if "synchronous iterators" in str(warning.message)]
    assert len([body for body in bodies if body]) >= 3
    assert b"".join(bodies) == expected
