import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, ProgrammingError, connection, transaction
from django_tenants.utils import schema_context
from rest_framework.test import APIClient

from apps.accounts.services import create_api_key
from apps.audit.chain import GENESIS_HASH, entry_hash
from apps.audit.choices import ActorType, AuditAction, Outcome
from apps.audit.models import AuditEntry
from apps.audit.services import REDACTED, Actor, AuditTarget, field_changes, hashed_values, record, snapshot
from apps.audit.verify import verify_chain
from apps.units.models import Site
from tests.audit.conftest import COMMITTED_SCHEMA, chain_head, entries_after
from tests.conftest import TENANT_DOMAINS, admin_of
from tests.factories import SiteFactory, UnitFactory


def test_record_appends_linked_entries(head):
    user = admin_of("alpha")

    first = record(AuditAction.LOGIN, actor=user)
    second = record(AuditAction.LOGOUT, actor=user)

    assert [first.sequence, second.sequence] == [head + 1, head + 2]
    assert second.previous_hash == first.hash
    assert first.hash == entry_hash(hashed_values(first, "alpha"))
    stored = AuditEntry.objects.get(pk=second.pk)
    assert entry_hash(hashed_values(stored, "alpha")) == second.hash


def test_first_entry_links_to_genesis(head):
    record(AuditAction.LOGIN, actor=admin_of("alpha"))

    first = AuditEntry.objects.get(sequence=1)

    assert first.previous_hash == GENESIS_HASH


def test_record_stores_actor_object_and_changes(head):
    user = admin_of("alpha")
    site = SiteFactory(name="North")
    before = snapshot(site)
    site.address = "1 Plant Road"
    site.save()

    entry = record(AuditAction.OBJECT_UPDATED, actor=user, obj=site, before=before, after=snapshot(site))

    assert entry.actor_type == ActorType.USER
    assert entry.actor_id == str(user.pk)
    assert entry.actor_name == "admin"
    assert (entry.object_type, entry.object_id, entry.object_repr) == ("units.site", str(site.pk), "North")
    assert entry.changes == {"address": ["", "1 Plant Road"]}
    assert entry.outcome == Outcome.SUCCESS


def test_system_job_actor_without_request(head):
    entry = record(AuditAction.TENANT_LIFECYCLE, actor=Actor.system_job("telemetry.ensure_partitions"))

    assert entry.actor_type == ActorType.SYSTEM_JOB
    assert entry.actor_id == "telemetry.ensure_partitions"
    assert entry.source_ip is None
    assert entry.request_id == ""


def test_edge_agent_actor_recorded_and_filterable(head, alpha_api):
    entry = record(
        AuditAction.OBJECT_UPDATED, actor=Actor.edge_agent("gw-07", "Boiler house gateway"),
        detail={"config_version": 12},
    )

    response = alpha_api.get("/api/v1/audit/entries/", {"actor_type": "edge_agent"})

    assert (entry.actor_type, entry.actor_id, entry.actor_name) == (
        ActorType.EDGE_AGENT, "gw-07", "Boiler house gateway",
    )
    assert response.status_code == 200
    assert [row["sequence"] for row in response.json()["results"]][:1] == [entry.sequence]
    assert verify_chain("alpha").intact


def test_rolled_back_change_leaves_no_entry(head):
    with pytest.raises(RuntimeError), transaction.atomic():
        site = Site.objects.create(name="Doomed")
        record(AuditAction.OBJECT_CREATED, actor=admin_of("alpha"), obj=site, after=snapshot(site))
        raise RuntimeError("change fails after the audit write")

    assert not Site.objects.filter(name="Doomed").exists()
    assert entries_after(head) == []


def test_failed_audit_write_rolls_change_back(head, monkeypatch):
    def failing_hash(values):
        raise ValueError("hash failed")

    monkeypatch.setattr("apps.audit.services.entry_hash", failing_hash)

    with pytest.raises(ValueError), transaction.atomic():
        site = Site.objects.create(name="Unaudited")
        record(AuditAction.OBJECT_CREATED, actor=admin_of("alpha"), obj=site)

    assert not Site.objects.filter(name="Unaudited").exists()
    assert entries_after(head) == []


def test_unknown_action_is_rejected(head):
    with pytest.raises(ValueError, match="site.renamed"):
        record("site.renamed", actor=admin_of("alpha"))


def test_actor_must_be_user_or_actor(head):
    with pytest.raises(TypeError, match="Actor.system_job"):
        record(AuditAction.LOGIN, actor="admin")


def test_record_on_public_schema_is_rejected(db):
    connection.set_schema_to_public()

    with pytest.raises(RuntimeError, match="public schema"):
        record(AuditAction.LOGIN, actor=Actor.system_job("platform"))


def test_deleted_object_needs_target_taken_before(head):
    site = SiteFactory()
    target = AuditTarget.of(site)
    site.delete()

    entry = record(AuditAction.OBJECT_DELETED, actor=admin_of("alpha"), obj=target)

    assert entry.object_id == target.id
    with pytest.raises(ValueError, match="before deleting"):
        AuditTarget.of(site)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_auditentry SET actor_name = 'mallory'",
        "DELETE FROM audit_auditentry",
        "TRUNCATE audit_auditentry",
    ],
)
def test_database_rejects_changing_entries(head, statement):
    record(AuditAction.LOGIN, actor=admin_of("alpha"))

    with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement)

    assert AuditEntry.objects.filter(sequence=head + 1, actor_name="admin").exists()


def test_orm_delete_of_entry_is_rejected(head):
    entry = record(AuditAction.LOGIN, actor=admin_of("alpha"))

    with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic():
        entry.delete()


def test_duplicate_sequence_is_rejected(head):
    entry = record(AuditAction.LOGIN, actor=admin_of("alpha"))

    with pytest.raises(IntegrityError), transaction.atomic():
        AuditEntry.objects.create(
            sequence=entry.sequence, time=entry.time, actor_type=entry.actor_type, action=entry.action,
            previous_hash=entry.previous_hash, hash=entry.hash,
        )


def test_field_changes_lists_only_differences():
    changes = field_changes({"name": "A", "kind": "boiler"}, {"name": "B", "kind": "boiler", "status": "x"})

    assert changes == {"name": ["A", "B"], "status": [None, "x"]}


def test_snapshot_uses_json_types_and_foreign_key_ids(alpha):
    unit = UnitFactory(name="Boiler 9")

    values = snapshot(unit)

    assert values["site"] == unit.site_id
    assert values["name"] == "Boiler 9"
    assert "id" not in values


def test_snapshot_redacts_password(alpha):
    user = get_user_model().objects.create_user(username="operator1", password="Secret-4711-horse")

    values = snapshot(user)

    assert values["password"] == REDACTED
    assert "Secret" not in str(values)


@pytest.mark.slow
def test_concurrent_writers_do_not_fork_chain(committed_tenant, django_db_blocker):
    writers, entries_each = 8, 10
    start = threading.Barrier(writers)
    errors = []

    def write(worker):
        try:
            with schema_context(COMMITTED_SCHEMA):
                start.wait()
                for number in range(entries_each):
                    with transaction.atomic():
                        record(
                            AuditAction.TENANT_LIFECYCLE,
                            actor=Actor.system_job(f"writer-{worker}"),
                            detail={"number": number},
                        )
        except Exception as exc:  # collected so the main thread can report it
            errors.append(exc)
        finally:
            connection.close()

    with django_db_blocker.unblock():
        threads = [threading.Thread(target=write, args=(worker,)) for worker in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        report = verify_chain(COMMITTED_SCHEMA)

    assert errors == []
    assert report.intact
    # Entry 1 records the tenant's provisioning.
    assert report.entries_checked == writers * entries_each + 1
    assert report.head_sequence == writers * entries_each + 1


def test_numbers_in_details_survive_storage(head):
    # jsonb returns 1e20 as an integer and 1.0 as a decimal; the hash must not depend on that.
    record(
        AuditAction.SETPOINT_WRITTEN, actor=admin_of("alpha"),
        detail={"large": 1e20, "small": 1.5e-7, "whole": 1.0, "negative": -0.25, "nested": [2.0, {"x": 3.5}]},
    )

    report = verify_chain("alpha")

    assert report.intact, report.first_break


def test_api_key_request_is_recorded_as_key(alpha):
    api_key, key = create_api_key(name="Historian export", role="admin", actor=admin_of("alpha"))
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    start = chain_head()

    response = client.post("/api/v1/sites/", {"name": "Keyed"}, format="json")

    [entry] = entries_after(start)
    assert response.status_code == 201
    assert (entry.actor_type, entry.actor_id, entry.actor_name) == (ActorType.API_KEY, api_key.prefix, "Historian export")
