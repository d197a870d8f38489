"""The tenant archive file: a ZIP64 file with one member per table and a manifest.json, written and read in streams.

Each table member contains the rows in PostgreSQL's COPY text format, one row
per line (newlines inside values are escaped as ``\\n``), so a member's row
count is its number of newline bytes. The manifest, written last, records
for every member its table, columns, row count, size and SHA-256.
"""

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

ARCHIVE_FORMAT = "thermacore-tenant-archive"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
MANIFEST_NAME = "manifest.json"
CHUNK_SIZE = 1 << 20
# Table, column and partition names an archive may contain: what list_tables reads from a tenant schema.
IDENTIFIER_PATTERN = re.compile(r"^[a-z_][a-z0-9_$]{0,62}$")
# django_migrations is never archived, because the manifest's migration state replaces it.
_NOT_ARCHIVED_TABLES = frozenset({"django_migrations"})


class ArchiveInvalid(Exception):
    """The archive is damaged, changed or not a tenant archive."""


class ArchiveIncompatible(Exception):
    """The archive is intact but cannot be restored into this deployment, e.g. it needs a newer migration."""


def member_name(table):
    return f"data/{table}.copy"


class ArchiveWriter:
    """Write an archive to a temporary file beside `path` and move it into place only when complete.

    Use it as a context manager: an exception inside the block removes the
    temporary file, so a failed export never leaves a partial archive.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.temporary_path = self.path.with_name(f".{self.path.name}.partial")
        self._file = None
        self._zip = None

    def __enter__(self):
        # The archive contains password hashes and TOTP secrets, so only the owner may read it.
        descriptor = os.open(self.temporary_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file = os.fdopen(descriptor, "wb")
        self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6)
        return self

    def __exit__(self, exc_type, exc, traceback):
        self._zip.close()
        if exc_type is None:
            os.replace(self.temporary_path, self.path)
        else:
            self.temporary_path.unlink(missing_ok=True)
        return False

    def add_table(self, table, chunks, on_chunk=None):
        """Write one table's COPY output; return its member name, SHA-256, size in bytes and row count."""
        name = member_name(table)
        digest = hashlib.sha256()
        size = rows = 0
        # force_zip64 because the size of a readings table is unknown before it is streamed.
        with self._zip.open(name, "w", force_zip64=True) as member:
            for chunk in chunks:
                member.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                rows += chunk.count(b"\n")
                if on_chunk is not None:
                    on_chunk(rows)
        return {"member": name, "sha256": digest.hexdigest(), "bytes": size, "rows": rows}

    def add_manifest(self, manifest):
        self._zip.writestr(MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path):
    """Return the manifest of the archive at `path` after checking its format and version."""
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read(MANIFEST_NAME))
    except FileNotFoundError:
        raise ArchiveInvalid(f"Archive {path} does not exist; give the path of a file written by export_tenant.") from None
    except IsADirectoryError:
        raise ArchiveInvalid(f"{path} is a directory; give the path of an archive file written by export_tenant.") from None
    except OSError as exc:
        raise ArchiveInvalid(f"Archive {path} cannot be read ({exc}); check the path and its permissions.") from None
    except zipfile.BadZipFile as exc:
        raise ArchiveInvalid(f"{path} is not a tenant archive: it is not a valid ZIP file ({exc}).") from None
    except KeyError:
        raise ArchiveInvalid(f"{path} is not a tenant archive: it contains no {MANIFEST_NAME}.") from None
    except ValueError as exc:
        raise ArchiveInvalid(f"{path}: {MANIFEST_NAME} is not valid JSON ({exc}).") from None

    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise ArchiveInvalid(f"{path}: {MANIFEST_NAME} does not describe a {ARCHIVE_FORMAT} file.")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ArchiveIncompatible(
            f"{path} has archive format version {version!r}, but this deployment reads versions "
            f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}; restore it with the ThermaCore release that wrote it "
            "or a later one."
        )
    for key in ("source", "migrations", "tables"):
        if key not in manifest:
            raise ArchiveInvalid(f"{path}: {MANIFEST_NAME} lacks the key {key!r}.")
    _check_manifest_types(path, manifest)
    return manifest


def _check_manifest_types(path, manifest):
    """Raise ArchiveInvalid unless every manifest value that a restore uses has the type and form an export writes.

    Names reach SQL only as quoted identifiers, but a restore also trusts
    them to name tables of the new schema, so each must look like one.
    """

    def invalid(problem):
        return ArchiveInvalid(f"{path}: {MANIFEST_NAME} is invalid: {problem}; the manifest was changed or damaged.")

    def check_name(kind, value):
        if not isinstance(value, str) or not IDENTIFIER_PATTERN.match(value):
            raise invalid(f"{kind} {value!r} is not a table or column name of a tenant schema")

    source = manifest["source"]
    if not isinstance(source, dict) or not isinstance(source.get("schema"), str) or not isinstance(source.get("name"), str):
        raise invalid("'source' needs the strings 'schema' and 'name'")
    if not isinstance(source.get("settings", {}), dict):
        raise invalid("'source.settings' is not an object")
    migrations = manifest["migrations"]
    if not isinstance(migrations, dict) or not all(
        isinstance(app, str) and isinstance(names, list) and all(isinstance(name, str) for name in names)
        for app, names in migrations.items()
    ):
        raise invalid("'migrations' is not an object of app names to lists of migration names")
    tables = manifest["tables"]
    if not isinstance(tables, list) or not all(isinstance(table, dict) for table in tables):
        raise invalid("'tables' is not a list of objects")

    seen = set()
    for table in tables:
        name = table.get("table")
        check_name("table", name)
        if name in _NOT_ARCHIVED_TABLES or name in seen:
            raise invalid(f"table {name!r} is listed twice or is never archived")
        seen.add(name)
        if table.get("member") != member_name(name):
            raise invalid(f"table {name!r} has the member {table.get('member')!r} instead of {member_name(name)!r}")
        columns = table.get("columns")
        if not isinstance(columns, list) or not columns or len(set(map(str, columns))) != len(columns):
            raise invalid(f"table {name!r} has no list of distinct columns")
        for column in columns:
            check_name(f"column of table {name!r}", column)
        for key in ("rows", "bytes"):
            value = table.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise invalid(f"table {name!r} has {key} {value!r}, not a count")
        if not isinstance(table.get("sha256"), str):
            raise invalid(f"table {name!r} has no SHA-256")
        partitions = table.get("partitions", [])
        if not isinstance(partitions, list):
            raise invalid(f"'partitions' of table {name!r} is not a list")
        for partition in partitions:
            if not isinstance(partition, dict) or not isinstance(partition.get("bound"), str):
                raise invalid(f"a partition of table {name!r} has no bound")
            check_name(f"partition of table {name!r}", partition.get("name"))
    partition_names = {partition["name"] for table in tables for partition in table.get("partitions", [])}
    if partition_names & seen:
        raise invalid(f"partitions {', '.join(sorted(partition_names & seen))} have the names of archived tables")


def verify_members(path, manifest, *, expected_sha256=None):
    """Check the archive file and every table member against the manifest; raise ArchiveInvalid at the first mismatch.

    The member checksums reveal damage and edits of the data, but not a
    manifest rewritten to match. `expected_sha256`, the checksum recorded
    by the export (TenantExport.checksum), covers the manifest too.
    """
    if expected_sha256:
        actual = file_sha256(path)
        if actual != expected_sha256.lower():
            raise ArchiveInvalid(
                f"{path} has SHA-256 {actual}, but {expected_sha256} was expected: the file was changed or is "
                "another export."
            )
    with zipfile.ZipFile(path) as archive:
        present = set(archive.namelist()) - {MANIFEST_NAME}
        listed = {table["member"] for table in manifest["tables"]}
        if present != listed:
            extra = ", ".join(sorted(present - listed)) or "none"
            missing = ", ".join(sorted(listed - present)) or "none"
            raise ArchiveInvalid(
                f"{path}: the members do not match the manifest (not listed: {extra}; missing: {missing})."
            )
        for table in manifest["tables"]:
            digest = hashlib.sha256()
            size = rows = 0
            try:
                with archive.open(table["member"]) as member:
                    for chunk in iter(lambda: member.read(CHUNK_SIZE), b""):
                        digest.update(chunk)
                        size += len(chunk)
                        rows += chunk.count(b"\n")
            except (zipfile.BadZipFile, OSError) as exc:
                raise ArchiveInvalid(f"{path}: member {table['member']} cannot be read ({exc}).") from None
            if digest.hexdigest() != table["sha256"]:
                raise ArchiveInvalid(
                    f"{path}: member {table['member']} (table {table['table']}) has SHA-256 {digest.hexdigest()}, "
                    f"but the manifest gives {table['sha256']}: the archive was changed or damaged."
                )
            if rows != table["rows"] or size != table["bytes"]:
                raise ArchiveInvalid(
                    f"{path}: member {table['member']} contains {rows} rows in {size} bytes, but the manifest gives "
                    f"{table['rows']} rows in {table['bytes']} bytes."
                )


def iter_member(path, member):
    """Yield the bytes of one member in chunks of CHUNK_SIZE."""
    with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
        yield from iter(lambda: stream.read(CHUNK_SIZE), b"")
