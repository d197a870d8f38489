"""Audit exports as CSV or JSON, produced in batches so any size streams, and their manifests.

An export covers the entries that match its filters up to a fixed sequence
(`through`). Entries never change, so the same filters and `through` always
give the same bytes, and the manifest can hash a second run of the export
instead of storing the file.
"""

import csv
import hashlib
import io

from asgiref.sync import sync_to_async
from django.utils import timezone
from django_tenants.utils import schema_context

from .chain import EXPORT_COLUMNS, canonical_ip, canonical_json, canonical_time, hashed_tenant_name
from .services import entry_row
from .verify import restore_points, retention_start

BATCH_SIZE = 1000
MANIFEST_VERSION = 1


class ExportFormat:
    CSV = "csv"
    JSON = "json"
    ALL = (CSV, JSON)
    CONTENT_TYPES = {CSV: "text/csv; charset=utf-8", JSON: "application/json"}


def export_record(entry, schema, restores=()):
    """Return an entry as the flat mapping written to exports, in canonical text forms.

    `tenant` is the name the entry was hashed with: `schema`, or for an entry
    from before a restore the source schema (`restores` from tenant_restores).
    """
    row = {**entry_row(entry), "tenant": hashed_tenant_name(entry.sequence, schema, restores)}
    row["time"] = canonical_time(row["time"])
    row["source_ip"] = canonical_ip(row["source_ip"])
    return {column: row[column] for column in EXPORT_COLUMNS}


class CsvEncoder:
    def start(self):
        return self._line(EXPORT_COLUMNS)

    def encode(self, records):
        return b"".join(
            self._line(
                [
                    canonical_json(record[column]) if column in ("changes", "detail")
                    else "" if record[column] is None else record[column]
                    for column in EXPORT_COLUMNS
                ]
            )
            for record in records
        )

    def end(self):
        return b""

    @staticmethod
    def _line(values):
        buffer = io.StringIO()
        csv.writer(buffer).writerow(values)
        return buffer.getvalue().encode("utf-8")


class JsonEncoder:
    """Encoder of a JSON array of entry objects, one entry per line."""

    def __init__(self):
        self.written = 0

    def start(self):
        return b"["

    def encode(self, records):
        parts = []
        for record in records:
            parts.append(("\n" if self.written == 0 else ",\n") + canonical_json(record))
            self.written += 1
        return "".join(parts).encode("utf-8")

    def end(self):
        return b"\n]\n"


def encoder_for(export_format):
    return CsvEncoder() if export_format == ExportFormat.CSV else JsonEncoder()


def _retention_start(schema):
    with schema_context(schema):
        return retention_start()


def tenant_restores(schema):
    """Return (sequence, source schema) of every restore in the tenant's chain, as export_record takes them."""
    with schema_context(schema):
        return restore_points()


def fetch_batch(schema, queryset, after, restores=()):
    """Return the next batch of entries with a sequence above `after`, in chain order."""
    with schema_context(schema):
        return [
            export_record(entry, schema, restores)
            for entry in queryset.filter(sequence__gt=after).order_by("sequence")[:BATCH_SIZE]
        ]


def iter_export(schema, queryset, export_format):
    """Yield the export file's bytes in chunks (for WSGI servers and for the manifest)."""
    encoder = encoder_for(export_format)
    restores = tenant_restores(schema)
    yield encoder.start()
    after = 0
    while batch := fetch_batch(schema, queryset, after, restores):
        yield encoder.encode(batch)
        after = batch[-1]["sequence"]
    yield encoder.end()


async def aiter_export(schema, queryset, export_format):
    """Yield the same bytes as iter_export without blocking the event loop (for ASGI servers).

    Django (5.2, StreamingHttpResponse.__aiter__) reads a synchronous
    iterator into a list when it serves it over ASGI, so ASGI responses need
    this asynchronous one to stream.
    """
    encoder = encoder_for(export_format)
    restores = await sync_to_async(tenant_restores)(schema)
    yield encoder.start()
    after = 0
    while batch := await sync_to_async(fetch_batch)(schema, queryset, after, restores):
        yield encoder.encode(batch)
        after = batch[-1]["sequence"]
    yield encoder.end()


def build_manifest(schema, queryset, export_format, *, filters, through, chain_head):
    """Return the manifest of an export: the SHA-256 of its bytes and the chain hashes at its ends.

    `chain_head` is the entry at sequence `through` (None for an empty
    chain). Its hash lets an auditor check later that the chain up to the
    export was not rewritten (verify_audit_chain --anchor).
    """
    digest = hashlib.sha256()
    size = 0
    for chunk in iter_export(schema, queryset, export_format):
        digest.update(chunk)
        size += len(chunk)
    return manifest_for_file(
        schema, queryset, export_format, filters=filters, through=through, chain_head=chain_head,
        file_sha256=digest.hexdigest(), file_size=size,
    )


def manifest_for_file(schema, queryset, export_format, *, filters, through, chain_head, file_sha256, file_size):
    """Return the manifest of an export file whose SHA-256 and size are already known, e.g. from writing it."""
    ordered = queryset.order_by("sequence")
    count = ordered.count()
    first = ordered.values("sequence", "previous_hash", "hash").first()
    last = ordered.reverse().values("sequence", "hash").first()
    return {
        "manifest_version": MANIFEST_VERSION,
        "tenant": schema,
        "format": export_format,
        "filters": filters,
        "through_sequence": through,
        # Without filters the export is the whole chain from entry 1, so gaps mean deleted entries.
        "contiguous": not filters,
        # After retention the whole chain starts after the last dropped entry and links to its hash.
        "chain_start": None if filters else _retention_start(schema),
        "entry_count": count,
        "file_size": file_size,
        "file_sha256": file_sha256,
        "first_entry": first,
        "last_entry": last,
        "chain_head": {"sequence": chain_head.sequence, "hash": chain_head.hash} if chain_head else None,
        # Entries before a restore carry their source schema's name (chain.hashed_tenant_name).
        "restores": [
            {"sequence": sequence, "source_schema": source} for sequence, source in tenant_restores(schema)
        ],
        "hash_algorithm": "sha256 of canonical JSON, see apps/audit/chain.py",
        "generated_at": canonical_time(timezone.now()),
    }
