import argparse
import re

from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import get_public_schema_name, get_tenant_model

from apps.audit.verify import verify_chain


def parse_anchor(value):
    sequence, _, chain_hash = value.partition(":")
    if not sequence.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", chain_hash):
        raise argparse.ArgumentTypeError(
            f"invalid anchor {value!r}; give SEQUENCE:HASH, e.g. 42:<64 lowercase hex digits>."
        )
    return int(sequence), chain_hash


class Command(BaseCommand):
    help = (
        "Verify the audit hash chain of one tenant (--schema) or of every tenant (--all) and report the first "
        "edited, deleted or inserted entry. Exits with status 1 when a chain is broken."
    )

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--schema", help="Schema name of the tenant to verify, e.g. alpha.")
        target.add_argument("--all", action="store_true", help="Verify every tenant.")
        parser.add_argument(
            "--anchor", action="append", default=[], type=parse_anchor, metavar="SEQUENCE:HASH",
            help="A chain hash recorded earlier, e.g. the chain_head of an export manifest; repeatable, only with "
            "--schema. Reveals a chain rewritten with recomputed hashes.",
        )

    def handle(self, *args, schema=None, all=False, anchor=(), **options):
        if anchor and not schema:
            raise CommandError("--anchor belongs to one tenant's chain; use it with --schema, not --all.")
        tenants = get_tenant_model().objects.exclude(schema_name=get_public_schema_name())
        if schema:
            if not tenants.filter(schema_name=schema).exists():
                known = ", ".join(tenants.values_list("schema_name", flat=True)) or "none"
                raise CommandError(f"No tenant has schema {schema!r}; known tenant schemas: {known}.")
            schemas = [schema]
        else:
            schemas = list(tenants.order_by("schema_name").values_list("schema_name", flat=True))

        broken = []
        for name in schemas:
            report = verify_chain(name, anchors=dict(anchor))
            if report.intact:
                head = f"head {report.head_sequence} {report.head_hash}" if report.head_hash else "empty chain"
                self.stdout.write(f"{name}: OK, {report.entries_checked} entries, {head}")
            else:
                failure = report.first_break
                self.stdout.write(f"{name}: BROKEN at entry {failure.sequence} ({failure.kind}): {failure.message}")
                broken.append(name)

        if broken:
            raise CommandError(f"Audit chain broken in {len(broken)} tenant(s): {', '.join(broken)}.", returncode=1)
