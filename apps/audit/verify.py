"""Check a tenant's audit chain in the database."""

from dataclasses import dataclass

from django_tenants.utils import schema_context

from .chain import ChainBreak, find_first_break, hashed_tenant_name
from .choices import AuditAction
from .models import AuditEntry
from .services import entry_row

CHUNK_SIZE = 2000


@dataclass(frozen=True)
class ChainReport:
    """Result of verifying one tenant's chain; `first_break` is None when the chain is intact."""

    schema: str
    entries_checked: int
    head_sequence: int | None
    head_hash: str | None
    first_break: ChainBreak | None

    @property
    def intact(self):
        return self.first_break is None


def retention_start():
    """Return where the current tenant's chain starts after retention, as find_first_break's `start`, or None.

    The latest retention entry names the last dropped entry and its hash; it
    is part of the chain itself, so forging it breaks the chain after it.
    """
    latest = (
        AuditEntry.objects.filter(action=AuditAction.RETENTION_DROPPED).order_by("-sequence").values("detail").first()
    )
    if latest is None:
        return None
    return {"sequence": latest["detail"]["through_sequence"], "hash": latest["detail"]["last_dropped_hash"]}


def restore_points():
    """Return (sequence, source schema) of each restore recorded in the current tenant's chain, in chain order.

    An entry is hashed with the schema name it was recorded in. A tenant
    restored from an archive under a new schema keeps the entries of its
    source, so they verify with the source's name, which the restore entry
    names. That entry and the later ones hash with the new schema's name.
    """
    restores = AuditEntry.objects.filter(action=AuditAction.TENANT_LIFECYCLE, detail__event="restored")
    return [
        (row["sequence"], row["detail"]["source_schema"])
        for row in restores.order_by("sequence").values("sequence", "detail")
    ]


def verify_chain(schema, *, anchors=None):
    """Verify the audit chain of one tenant schema from its first entry to its head.

    `anchors` maps sequences to hashes recorded earlier (see chain.find_first_break).
    """
    counted = {"entries": 0, "last": None}

    def rows(restores):
        for entry in AuditEntry.objects.in_chain_order().iterator(chunk_size=CHUNK_SIZE):
            counted["entries"] += 1
            counted["last"] = entry
            yield {**entry_row(entry), "tenant": hashed_tenant_name(entry.sequence, schema, restores)}

    with schema_context(schema):
        restores = restore_points()
        first_break = find_first_break(rows(restores), contiguous=True, anchors=anchors, start=retention_start())
    last = counted["last"]
    return ChainReport(
        schema=schema,
        entries_checked=counted["entries"],
        head_sequence=last.sequence if last else None,
        head_hash=last.hash if last else None,
        first_break=first_break,
    )
