"""Tampering with the audit table in SQL, as a superuser could, is found by the chain verifier."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.audit.chain import BreakKind, entry_hash
from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.audit.services import Actor, hashed_values, record
from apps.audit.verify import verify_chain
from tests.audit.conftest import run_sql_bypassing_trigger


@pytest.fixture
def chain(head):
    """Five fresh entries on alpha's chain; returns their sequences."""
    entries = [
        record(AuditAction.TENANT_LIFECYCLE, actor=Actor.system_job("test"), detail={"step": step})
        for step in range(5)
    ]
    return [entry.sequence for entry in entries]


def forged_hash(sequence):
    """Return the hash an attacker would compute for the entry as it now is in the table."""
    return entry_hash(hashed_values(AuditEntry.objects.get(sequence=sequence), "alpha"))


def test_intact_chain_verifies(chain):
    report = verify_chain("alpha")

    assert report.intact
    assert report.head_sequence == chain[-1]
    assert report.head_hash == AuditEntry.objects.get(sequence=chain[-1]).hash


def test_edited_entry_is_found(chain):
    run_sql_bypassing_trigger("UPDATE audit_auditentry SET actor_name = 'mallory' WHERE sequence = %s", [chain[2]])

    report = verify_chain("alpha")

    assert report.first_break.sequence == chain[2]
    assert report.first_break.kind == BreakKind.EDITED


def test_edited_entry_with_recomputed_hash_breaks_next_link(chain):
    run_sql_bypassing_trigger("UPDATE audit_auditentry SET detail = '{\"step\": 99}' WHERE sequence = %s", [chain[1]])
    run_sql_bypassing_trigger(
        "UPDATE audit_auditentry SET hash = %s WHERE sequence = %s", [forged_hash(chain[1]), chain[1]]
    )

    report = verify_chain("alpha")

    assert report.first_break.sequence == chain[2]
    assert report.first_break.kind == BreakKind.INSERTED


def test_deleted_entry_is_found(chain):
    run_sql_bypassing_trigger("DELETE FROM audit_auditentry WHERE sequence = %s", [chain[3]])

    report = verify_chain("alpha")

    assert report.first_break.sequence == chain[4]
    assert report.first_break.kind == BreakKind.DELETED
    assert f"Entries {chain[3]} to {chain[3]} are missing" in report.first_break.message


def test_deleted_first_entries_are_found(chain):
    run_sql_bypassing_trigger("DELETE FROM audit_auditentry WHERE sequence < %s", [chain[1]])

    report = verify_chain("alpha")

    assert report.first_break.kind == BreakKind.DELETED
    assert report.first_break.sequence == chain[1]


def test_inserted_entry_is_found(chain):
    # Make room after chain[1] and insert a forged entry that links correctly to chain[1].
    run_sql_bypassing_trigger(
        "UPDATE audit_auditentry SET sequence = sequence + 1000000 WHERE sequence > %s", [chain[1]]
    )
    run_sql_bypassing_trigger(
        "UPDATE audit_auditentry SET sequence = sequence - 999999 WHERE sequence > 1000000"
    )
    predecessor = AuditEntry.objects.get(sequence=chain[1])
    forged = AuditEntry(
        sequence=chain[1] + 1, time=predecessor.time, actor_type="user", actor_id="1", actor_name="admin",
        action=AuditAction.OBJECT_DELETED, object_type="units.unit", object_id="7", previous_hash=predecessor.hash,
        changes={}, detail={},
    )
    forged.hash = entry_hash(hashed_values(forged, "alpha"))
    forged.save(force_insert=True)

    report = verify_chain("alpha")

    # The forged entry itself is well formed; the renumbered entry after it no longer matches its hash.
    assert report.first_break.sequence == chain[1] + 2
    assert report.first_break.kind == BreakKind.EDITED


def test_reordered_entries_are_found(chain):
    first, second = chain[1], chain[2]
    run_sql_bypassing_trigger(
        "UPDATE audit_auditentry SET sequence = CASE sequence WHEN %s THEN %s ELSE %s END + 1000000 "
        "WHERE sequence IN (%s, %s)",
        [first, second, first, first, second],
    )
    run_sql_bypassing_trigger("UPDATE audit_auditentry SET sequence = sequence - 1000000 WHERE sequence > 1000000")

    report = verify_chain("alpha")

    assert report.first_break.sequence == first
    assert report.first_break.kind == BreakKind.EDITED


def test_rewritten_chain_is_found_by_anchor(chain):
    anchor = {chain[3]: AuditEntry.objects.get(sequence=chain[3]).hash}
    # Rewrite from chain[2] on, recomputing every hash and link so the chain is consistent by itself.
    run_sql_bypassing_trigger("UPDATE audit_auditentry SET actor_name = 'mallory' WHERE sequence >= %s", [chain[2]])
    for sequence in chain[2:]:
        previous = AuditEntry.objects.get(sequence=sequence - 1).hash
        run_sql_bypassing_trigger(
            "UPDATE audit_auditentry SET previous_hash = %s WHERE sequence = %s", [previous, sequence]
        )
        run_sql_bypassing_trigger(
            "UPDATE audit_auditentry SET hash = %s WHERE sequence = %s", [forged_hash(sequence), sequence]
        )

    without_anchor = verify_chain("alpha")
    with_anchor = verify_chain("alpha", anchors=anchor)

    assert without_anchor.intact
    assert with_anchor.first_break.sequence == chain[3]
    assert with_anchor.first_break.kind == BreakKind.ANCHOR_MISMATCH


def test_truncated_chain_is_found_by_anchor(chain):
    anchor = {chain[4]: AuditEntry.objects.get(sequence=chain[4]).hash}
    run_sql_bypassing_trigger("DELETE FROM audit_auditentry WHERE sequence >= %s", [chain[3]])

    report = verify_chain("alpha", anchors=anchor)

    assert report.first_break.sequence == chain[4]
    assert report.first_break.kind == BreakKind.DELETED


def test_command_reports_intact_chains(chain, beta, capsys):
    call_command("verify_audit_chain", "--all")

    output = capsys.readouterr().out
    assert f"alpha: OK, {chain[-1]} entries, head {chain[-1]}" in output
    assert "beta: OK" in output


def test_command_reports_first_broken_link(chain, capsys):
    run_sql_bypassing_trigger("DELETE FROM audit_auditentry WHERE sequence = %s", [chain[1]])

    with pytest.raises(CommandError, match="broken in 1 tenant") as raised:
        call_command("verify_audit_chain", "--schema", "alpha")

    assert raised.value.returncode == 1
    assert f"alpha: BROKEN at entry {chain[2]} (deleted)" in capsys.readouterr().out


def test_command_checks_anchor(chain, capsys):
    head = AuditEntry.objects.get(sequence=chain[-1])

    call_command("verify_audit_chain", "--schema", "alpha", "--anchor", f"{head.sequence}:{head.hash}")

    assert "alpha: OK" in capsys.readouterr().out


def test_command_rejects_malformed_anchor(chain):
    with pytest.raises(CommandError, match="invalid anchor '12:abc'"):
        call_command("verify_audit_chain", "--schema", "alpha", "--anchor", "12:abc")


def test_command_names_unknown_schema(alpha):
    with pytest.raises(CommandError, match="No tenant has schema 'gone'.*alpha, beta"):
        call_command("verify_audit_chain", "--schema", "gone")
