"""Hash chain of audit entries: canonical form, entry hash, link checks and offline export verification.

This module imports only the standard library, so an auditor can copy this
one file and verify an export without ThermaCore or Django:

    python chain.py audit-alpha.csv audit-alpha.manifest.json

The database verifier and the export verifier both feed entries through
`find_first_break`, so they judge a chain by the same rules.

An entry's hash is the SHA-256, in lowercase hex, of the UTF-8 bytes of a
canonical JSON object holding the fields in HASHED_FIELDS: keys sorted, no
insignificant whitespace, non-ASCII characters kept as they are. The first
entry of a tenant's chain has GENESIS_HASH as its previous hash.

The hashed `tenant` is the schema name the entry was recorded in. A tenant
restored from an archive under a new schema keeps its source's entries
unchanged, so those hash with the source's name (see hashed_tenant_name).
"""

import argparse
import csv
import hashlib
import ipaddress
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone

GENESIS_HASH = "0" * 64

HASHED_FIELDS = (
    "tenant",
    "sequence",
    "time",
    "actor_type",
    "actor_id",
    "actor_name",
    "source_ip",
    "user_agent",
    "request_id",
    "action",
    "object_type",
    "object_id",
    "object_repr",
    "outcome",
    "changes",
    "detail",
    "previous_hash",
)

# Columns of CSV exports and keys of JSON export entries, in this order.
EXPORT_COLUMNS = (
    "sequence", "time", "tenant", "actor_type", "actor_id", "actor_name", "source_ip", "user_agent", "request_id",
    "action", "object_type", "object_id", "object_repr", "outcome", "changes", "detail", "previous_hash", "hash",
)
SUPPORTED_MANIFEST_VERSIONS = (1,)

# A tenant restored from an archive records the restore as an entry with this action and detail.event.
RESTORE_ACTION = "tenant.lifecycle"
RESTORE_EVENT = "restored"

# Text fields that are never null; a missing value hashes as "".
_TEXT_FIELDS = {
    "tenant", "actor_type", "actor_id", "actor_name", "user_agent", "request_id", "action", "object_type",
    "object_id", "object_repr", "outcome", "previous_hash",
}
_JSON_FIELDS = {"changes", "detail"}


def hashed_tenant_name(sequence, tenant, restores):
    """Return the tenant name that entry `sequence` of `tenant`'s chain was hashed with.

    `restores` lists (sequence, source schema) of the chain's restore
    entries in chain order. An entry before a restore entry was recorded in
    that restore's source schema, so it hashes with the source name of the
    first restore after it. The restore entry and every later one hash with
    `tenant`.
    """
    for restore_sequence, source_schema in restores:
        if int(sequence) < int(restore_sequence):
            return source_schema
    return tenant


def is_restore_entry(entry):
    detail = entry.get("detail")
    return entry.get("action") == RESTORE_ACTION and isinstance(detail, dict) and detail.get("event") == RESTORE_EVENT


class BreakKind:
    EDITED = "edited"
    DELETED = "deleted"
    INSERTED = "inserted"
    OUT_OF_ORDER = "out_of_order"
    ANCHOR_MISMATCH = "anchor_mismatch"


@dataclass(frozen=True)
class ChainBreak:
    """The first place where a chain stops proving its own integrity."""

    sequence: int
    kind: str
    message: str


def canonical_time(value):
    """Return a timestamp as UTC ISO 8601 with microseconds and a Z suffix."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        raise ValueError(f"Audit time {value.isoformat()!r} has no UTC offset; entries are stored in UTC.")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_ip(value):
    """Return an IP address in its compressed standard form, or None when there is none."""
    if value in (None, ""):
        return None
    return ipaddress.ip_address(value).compressed


def canonical_content(entry):
    """Return the hashed fields of an entry (a mapping) in canonical types."""
    content = {}
    for name in HASHED_FIELDS:
        value = entry.get(name)
        if name == "sequence":
            value = int(value)
        elif name == "time":
            value = canonical_time(value)
        elif name == "source_ip":
            value = canonical_ip(value)
        elif name in _JSON_FIELDS:
            value = _normalise_numbers(json.loads(value) if isinstance(value, str) else (value or {}))
        elif name in _TEXT_FIELDS:
            value = "" if value is None else str(value)
        content[name] = value
    return content


def _normalise_numbers(value):
    # PostgreSQL's jsonb keeps numbers as decimals and hands 1e20 back as an
    # integer, so integral floats hash as integers on both sides.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _normalise_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalise_numbers(item) for item in value]
    return value


def canonical_json(content):
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(entry):
    """Return the SHA-256 hex digest of an entry's canonical content, which includes its previous hash."""
    return hashlib.sha256(canonical_json(canonical_content(entry)).encode("utf-8")).hexdigest()


def find_first_break(entries, *, contiguous=True, anchors=None, start=None):
    """Return the first ChainBreak in entries (ordered by sequence), or None when the chain is intact.

    With contiguous=True the entries must be the whole chain from sequence 1,
    so a gap means deleted entries. With contiguous=False (a filtered export)
    gaps are expected and links are checked only between neighbouring
    sequences; every entry's own hash is still checked.

    `anchors` maps sequences to hashes known from earlier, e.g. from an
    export manifest. A chain rewritten from some entry on, with every hash
    recomputed, is consistent by itself, so only such an anchor reveals it.

    `start` ({"sequence": n, "hash": h}) says that entries 1 to n were
    archived and dropped by retention and that entry n hashed to h, so the
    chain starts at entry n + 1, which must link to h. Anchors at or below n
    are skipped because those entries are gone on purpose.
    """
    start_sequence = int(start["sequence"]) if start else 0
    start_hash = start["hash"] if start else GENESIS_HASH
    anchors = {
        int(sequence): value for sequence, value in (anchors or {}).items() if int(sequence) > start_sequence
    }
    previous = None
    for entry in entries:
        sequence = int(entry["sequence"])
        if sequence in anchors and anchors.pop(sequence) != entry["hash"]:
            return ChainBreak(
                sequence, BreakKind.ANCHOR_MISMATCH,
                f"Entry {sequence} has hash {entry['hash']}, but an earlier record of the chain gives a different "
                "hash for it: the chain was rewritten from here or earlier.",
            )
        recomputed = entry_hash(entry)
        if recomputed != entry["hash"]:
            return ChainBreak(
                sequence, BreakKind.EDITED,
                f"Entry {sequence} was edited: its content hashes to {recomputed}, not to its stored hash "
                f"{entry['hash']}.",
            )

        if previous is None:
            if contiguous and sequence <= start_sequence:
                return ChainBreak(
                    sequence, BreakKind.INSERTED,
                    f"Entry {sequence} lies in the range 1 to {start_sequence} that retention archived and dropped.",
                )
            if contiguous and sequence != start_sequence + 1:
                return ChainBreak(
                    sequence, BreakKind.DELETED,
                    f"Entries {start_sequence + 1} to {sequence - 1} are missing: the chain starts at entry {sequence}.",
                )
            if sequence == start_sequence + 1 and entry["previous_hash"] != start_hash:
                return ChainBreak(
                    sequence, BreakKind.INSERTED,
                    f"Entry {sequence} does not start the chain: its previous hash is {entry['previous_hash']}, "
                    f"not {start_hash}.",
                )
        else:
            previous_sequence = int(previous["sequence"])
            if sequence <= previous_sequence:
                return ChainBreak(
                    sequence, BreakKind.OUT_OF_ORDER,
                    f"Entry {sequence} comes after entry {previous_sequence}: entries are out of order or duplicated.",
                )
            if sequence == previous_sequence + 1 and entry["previous_hash"] != previous["hash"]:
                return ChainBreak(
                    sequence, BreakKind.INSERTED,
                    f"Entry {sequence} does not link to entry {previous_sequence}: it names {entry['previous_hash']} "
                    f"as previous hash, but entry {previous_sequence} hashes to {previous['hash']}. An entry was "
                    "inserted, replaced or moved here.",
                )
            if contiguous and sequence > previous_sequence + 1:
                return ChainBreak(
                    sequence, BreakKind.DELETED,
                    f"Entries {previous_sequence + 1} to {sequence - 1} are missing between entry "
                    f"{previous_sequence} and entry {sequence}.",
                )
        previous = entry

    if anchors and contiguous:
        missing = min(anchors)
        last = int(previous["sequence"]) if previous else 0
        return ChainBreak(
            missing, BreakKind.DELETED,
            f"Entry {missing} is known from an earlier record of the chain, but the chain ends at entry {last}: "
            "entries were deleted from its end.",
        )
    return None


class ExportInvalid(Exception):
    """An exported file does not match its manifest or does not contain an intact chain; the message names the entry or field."""


def _sha256_of_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as export:
        for block in iter(lambda: export.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_csv_entries(path):
    with open(path, newline="", encoding="utf-8") as export:
        reader = csv.reader(export)
        header = next(reader, None)
        if tuple(header or ()) != EXPORT_COLUMNS:
            raise ExportInvalid(f"{path}: the header is {header!r}, expected the columns {', '.join(EXPORT_COLUMNS)}.")
        for line_number, values in enumerate(reader, start=2):
            if len(values) != len(EXPORT_COLUMNS):
                raise ExportInvalid(f"{path}, line {line_number}: {len(values)} columns, expected {len(EXPORT_COLUMNS)}.")
            entry = dict(zip(EXPORT_COLUMNS, values))
            entry["sequence"] = int(entry["sequence"])
            entry["changes"] = json.loads(entry["changes"])
            entry["detail"] = json.loads(entry["detail"])
            yield entry


def _read_json_entries(path):
    # Exports put "[" on the first line, then one entry object per line, then "]".
    with open(path, encoding="utf-8") as export:
        for line_number, line in enumerate(export, start=1):
            text = line.strip().rstrip(",")
            if text in ("[", "]", ""):
                continue
            entry = json.loads(text)
            if not isinstance(entry, dict) or set(entry) != set(EXPORT_COLUMNS):
                raise ExportInvalid(f"{path}, line {line_number}: not an entry object with keys {', '.join(EXPORT_COLUMNS)}.")
            yield entry


def _manifest_restores(manifest, manifest_path):
    """Return the manifest's restore points as (sequence, source schema) pairs in chain order."""
    listed = manifest.get("restores") or []
    try:
        restores = sorted((int(point["sequence"]), str(point["source_schema"])) for point in listed)
    except (KeyError, TypeError, ValueError):
        raise ExportInvalid(
            f"{manifest_path}: restores {listed!r} is malformed; expected a list of "
            '{"sequence": <entry>, "source_schema": <schema>} objects.'
        ) from None
    return restores


def _check_restore_entry(entry, restore_sources):
    """Check that a restore entry in the file and the manifest's restore points name the same sequence and source."""
    sequence = int(entry["sequence"])
    if is_restore_entry(entry):
        source = entry["detail"].get("source_schema")
        if restore_sources.get(sequence) != source:
            raise ExportInvalid(
                f"Entry {sequence} records a restore from schema {source!r}, but the manifest's restores do not "
                "list it: the manifest belongs to another export."
            )
    elif sequence in restore_sources:
        raise ExportInvalid(
            f"The manifest lists a restore from schema {restore_sources[sequence]!r} at entry {sequence}, but that "
            f"entry of the file is {entry['action']!r}: the manifest belongs to another export."
        )


# Keys every manifest has, with their JSON types; None is allowed where an empty chain has no entry.
MANIFEST_TYPES = {
    "manifest_version": (int,),
    "tenant": (str,),
    "format": (str,),
    "through_sequence": (int,),
    "contiguous": (bool,),
    "entry_count": (int,),
    "file_sha256": (str,),
    "first_entry": (dict, type(None)),
    "last_entry": (dict, type(None)),
    "chain_head": (dict, type(None)),
}


JSON_TYPE_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _load_manifest(manifest_path):
    """Read a manifest file and check that it is an object with the keys and types of MANIFEST_TYPES."""
    try:
        with open(manifest_path, encoding="utf-8") as manifest_file:
            manifest = json.load(manifest_file)
    except OSError as exc:
        raise ExportInvalid(f"Cannot read the manifest {manifest_path}: {exc.strerror or exc}.") from None
    except ValueError as exc:
        # json.JSONDecodeError and UnicodeDecodeError are both ValueErrors.
        raise ExportInvalid(f"{manifest_path} is not a JSON manifest: {exc}.") from None
    if not isinstance(manifest, dict):
        raise ExportInvalid(
            f"{manifest_path} contains a JSON {JSON_TYPE_NAMES.get(type(manifest), 'value')}, but a manifest is a "
            "JSON object; give the manifest downloaded with the export."
        )
    missing = [key for key in MANIFEST_TYPES if key not in manifest]
    if missing:
        raise ExportInvalid(f"{manifest_path} is missing the keys {', '.join(missing)}; give the manifest "
                            "downloaded with the export.")
    for key, types in MANIFEST_TYPES.items():
        # bool is an int in Python, but a count or sequence of true would be a damaged manifest.
        if not isinstance(manifest[key], types) or (isinstance(manifest[key], bool) and bool not in types):
            expected = " or ".join(JSON_TYPE_NAMES.get(python_type, "object") for python_type in types)
            raise ExportInvalid(f"{manifest_path}: {key} {manifest[key]!r} is invalid; expected a JSON {expected}.")
    return manifest


def verify_export(export_path, manifest_path):
    """Check an exported file against its manifest and check the chain it contains; return a one-line summary.

    Raises ExportInvalid at the first problem: a changed file, entries that
    are missing or do not hash to their recorded values, broken links, or
    ends that differ from the manifest.
    """
    manifest = _load_manifest(manifest_path)
    if manifest.get("manifest_version") not in SUPPORTED_MANIFEST_VERSIONS:
        raise ExportInvalid(
            f"{manifest_path}: manifest_version {manifest.get('manifest_version')!r} is not supported; "
            f"this verifier reads versions {SUPPORTED_MANIFEST_VERSIONS}."
        )

    try:
        actual = _sha256_of_file(export_path)
    except OSError as exc:
        raise ExportInvalid(f"Cannot read the export {export_path}: {exc.strerror or exc}.") from None
    if actual != manifest["file_sha256"]:
        raise ExportInvalid(
            f"{export_path} has SHA-256 {actual}, but the manifest gives {manifest['file_sha256']}: "
            "the file was changed or belongs to another export."
        )

    reader = {"csv": _read_csv_entries, "json": _read_json_entries}.get(manifest["format"])
    if reader is None:
        raise ExportInvalid(f"{manifest_path}: unknown format {manifest['format']!r}; expected csv or json.")
    restores = _manifest_restores(manifest, manifest_path)
    restore_sources = dict(restores)
    seen = {"count": 0, "first": None, "last": None}

    def entries():
        for entry in reader(export_path):
            _check_restore_entry(entry, restore_sources)
            expected_tenant = hashed_tenant_name(entry["sequence"], manifest["tenant"], restores)
            if entry["tenant"] != expected_tenant:
                raise ExportInvalid(
                    f"Entry {entry['sequence']} belongs to tenant {entry['tenant']!r}, not {expected_tenant!r}."
                )
            if entry["sequence"] > manifest["through_sequence"]:
                raise ExportInvalid(
                    f"Entry {entry['sequence']} lies beyond the export's end at entry {manifest['through_sequence']}."
                )
            seen["count"] += 1
            seen["first"] = seen["first"] or entry
            seen["last"] = entry
            yield entry

    try:
        # An archive of entries dropped by retention starts after the archives before it.
        failure = find_first_break(entries(), contiguous=manifest["contiguous"], start=manifest.get("chain_start"))
    except (ValueError, KeyError, TypeError) as exc:
        # A malformed value (time, address, JSON, sequence) in a row of the file.
        raise ExportInvalid(
            f"{export_path}: entry number {seen['count'] + 1} of the file is malformed ({exc!r}); "
            "the file was changed or is not an audit export."
        ) from exc
    if failure is not None:
        raise ExportInvalid(f"Chain broken at entry {failure.sequence} ({failure.kind}): {failure.message}")

    if seen["count"] != manifest["entry_count"]:
        raise ExportInvalid(f"The file contains {seen['count']} entries, but the manifest gives {manifest['entry_count']}.")
    for end, keys in (("first", ("sequence", "previous_hash", "hash")), ("last", ("sequence", "hash"))):
        expected = manifest[f"{end}_entry"]
        found = {key: seen[end][key] for key in keys} if seen[end] else None
        if found != expected:
            raise ExportInvalid(f"The {end} entry of the file is {found}, but the manifest gives {expected}.")
    if manifest["contiguous"] and manifest["last_entry"] != manifest["chain_head"]:
        raise ExportInvalid(
            f"The export should end at the chain head {manifest['chain_head']}, but ends at {manifest['last_entry']}."
        )

    restored = "".join(f", restored from {source} at entry {sequence}" for sequence, source in restores)
    return (
        f"OK: {seen['count']} entries of tenant {manifest['tenant']} through entry {manifest['through_sequence']}"
        f"{restored}, file SHA-256 {actual}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description="Verify an exported ThermaCore audit trail against its manifest.")
    parser.add_argument("export", help="The exported .csv or .json file.")
    parser.add_argument("manifest", help="The manifest (JSON) downloaded with the export.")
    arguments = parser.parse_args(argv)
    try:
        print(verify_export(arguments.export, arguments.manifest))
    except ExportInvalid as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
