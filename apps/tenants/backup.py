"""Export a whole tenant schema to an archive, restore an archive as a new tenant, and delete a tenant after export.

Run these from the public schema. The archive format is in apps.tenants.archive
and docs/tenants.md describes the procedure. Tables are streamed with
PostgreSQL COPY, so no table is ever held in memory.
"""

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
import redis
from django.apps import apps as django_apps
from django.core.exceptions import ValidationError
from django.core.management.sql import emit_post_migrate_signal
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context, schema_exists
from psycopg import sql

from apps.audit.models import AuditEntry
from apps.audit.services import Actor, record_tenant_lifecycle

from . import archive
from .archive import ArchiveIncompatible, ArchiveInvalid
from .backup_models import ExportStatus, TenantExport, TenantLifecycleEvent
from .choices import TenantStatus
from .models import Domain, Tenant
from .redis_keys import delete_tenant_keys
from .services import create_tenant_schema, discard_tenant
from .validators import validate_domain_name, validate_new_schema_name

logger = logging.getLogger(__name__)

# Tenant fields that belong to the schema's identity or lifecycle, not to its settings.
_NOT_SETTINGS = {"id", "schema_name", "created_at", "status", "suspended_at", "suspension_reason"}
# The export writes the TenantExport row at most this often while a table streams, in seconds.
_PROGRESS_INTERVAL = 1.0
_MIGRATIONS_TABLE = "django_migrations"
# How long delete_tenant waits for running writes to the schema before it gives up.
DELETE_LOCK_TIMEOUT = "30s"
# The only partition bound a restore accepts besides DEFAULT: a timestamp range as pg_get_expr writes it.
_RANGE_BOUND_PATTERN = re.compile(r"^FOR VALUES FROM \('([0-9: +.-]+)'\) TO \('([0-9: +.-]+)'\)$")


class DeletionRejected(Exception):
    """Deleting a tenant was rejected, e.g. because no export is newer than its data."""


@dataclass(frozen=True)
class ExportProgress:
    """Progress of an export: the table being written and the rows written so far."""

    table: str
    table_rows: int
    tables_done: int
    tables_total: int
    rows_written: int
    percent: int
    table_finished: bool


# Export ------------------------------------------------------------------------


def export_tenant(tenant, path, *, progress=None, requested_by="", export=None):
    """Write every table of the tenant's schema, with a manifest, to a new archive file at `path`.

    All tables are read in one REPEATABLE READ snapshot, so the archive is
    consistent while the tenant keeps running. `progress` is called with an
    ExportProgress after each table and about once a second during a long
    one. Returns the TenantExport, which records the status, the archive's
    SHA-256 and the snapshot that delete_tenant compares against later.
    """
    if tenant.schema_name == get_public_schema_name():
        raise ValueError("The public schema is the platform itself, not a tenant; give a tenant's schema name.")
    path = Path(path).resolve()
    problem = None
    if path.exists():
        problem = FileExistsError(f"{path} already exists; choose another output file or remove that one.")
    elif not path.parent.is_dir():
        problem = FileNotFoundError(f"Directory {path.parent} does not exist; create it or choose another output file.")
    if problem is not None:
        if export is not None:
            _save_export(export, status=ExportStatus.FAILED, error=str(problem), finished_at=timezone.now())
        raise problem

    if export is None:
        export = TenantExport.objects.create(
            tenant=tenant, schema_name=tenant.schema_name, tenant_name=tenant.name, requested_by=requested_by
        )
    _save_export(export, status=ExportStatus.RUNNING, started_at=timezone.now(), file_path=str(path), error="")
    logger.info("Exporting tenant schema=%s export=%s to %s", tenant.schema_name, export.pk, path)

    # Recorded before the snapshot, so the archive contains the entry of its own export.
    with transaction.atomic():
        record_tenant_lifecycle(
            tenant, "export_started", actor=Actor.system_job("tenants.export"),
            detail={"export_id": export.pk, "requested_by": requested_by, "file": path.name},
        )

    reporter = _ExportReporter(export, progress)
    try:
        manifest = _write_archive(tenant, path, reporter)
    except Exception as exc:
        logger.exception("Export of tenant schema=%s export=%s failed", tenant.schema_name, export.pk)
        _save_export(export, status=ExportStatus.FAILED, error=str(exc), finished_at=timezone.now())
        raise

    checksum = archive.file_sha256(path)
    row_counts = {table["table"]: table["rows"] for table in manifest["tables"]}
    _save_export(
        export, status=ExportStatus.DONE, progress_percent=100, current_table="", checksum=checksum,
        file_size=path.stat().st_size, snapshot=manifest["snapshot"], row_counts=row_counts,
        rows_written=sum(row_counts.values()), finished_at=timezone.now(),
    )
    TenantLifecycleEvent.objects.create(
        schema_name=tenant.schema_name, tenant_name=tenant.name, event="exported", actor=requested_by or "tenants.export",
        detail={"export_id": export.pk, "file": str(path), "sha256": checksum, "rows": export.rows_written},
    )
    logger.info(
        "Exported tenant schema=%s export=%s: %s tables, %s rows, %s bytes, SHA-256 %s",
        tenant.schema_name, export.pk, len(row_counts), export.rows_written, export.file_size, checksum,
    )
    return export


def _save_export(export, **fields):
    for name, value in fields.items():
        setattr(export, name, value)
    TenantExport.objects.filter(pk=export.pk).update(**fields)


class _ExportReporter:
    """Turn per-chunk row counts into ExportProgress calls and throttled TenantExport updates."""

    def __init__(self, export, callback):
        self.export = export
        self.callback = callback
        self.estimates = {}
        self.tables_done = 0
        self.rows_before_table = 0
        self.last_report = 0.0

    def percent(self, table, table_rows):
        total = sum(self.estimates.values()) or 1
        done = sum(estimate for name, estimate in self.estimates.items() if name < table)
        # Estimates come from PostgreSQL's statistics, so a table may exceed its own; 99 until the end.
        return min(99, int(100 * (done + min(table_rows, self.estimates.get(table, 0))) / total))

    def report(self, table, table_rows, *, finished=False):
        now = time.monotonic()
        if not finished and now - self.last_report < _PROGRESS_INTERVAL:
            return
        self.last_report = now
        if finished:
            self.tables_done += 1
        rows_written = self.rows_before_table + table_rows
        percent = self.percent(table, table_rows)
        if finished:
            self.rows_before_table = rows_written
        _save_export(self.export, progress_percent=percent, current_table=table, rows_written=rows_written)
        if self.callback is not None:
            self.callback(
                ExportProgress(
                    table=table, table_rows=table_rows, tables_done=self.tables_done,
                    tables_total=len(self.estimates), rows_written=rows_written, percent=percent,
                    table_finished=finished,
                )
            )


def _snapshot_connection():
    """Open a separate psycopg connection for one read-only REPEATABLE READ transaction."""
    raw = connection.get_new_connection(connection.get_connection_params())
    raw.autocommit = True
    # Fixed output formats, so the archive reads the same into any server; extra_float_digits 1 keeps floats exact.
    raw.execute("SET TIME ZONE 'UTC'")
    raw.execute("SET DateStyle TO ISO")
    raw.execute("SET IntervalStyle TO postgres")
    raw.execute("SET extra_float_digits TO 1")
    raw.autocommit = False
    raw.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    raw.read_only = True
    return raw


def _write_archive(tenant, path, reporter):
    schema = tenant.schema_name
    with _snapshot_connection() as raw, raw.cursor() as cursor:
        # The first query of a REPEATABLE READ transaction fixes its snapshot.
        cursor.execute("SELECT pg_current_snapshot()::text")
        snapshot = cursor.fetchone()[0]
        tables = list_tables(cursor, schema)
        reporter.estimates = {table["table"]: table.pop("estimate") for table in tables}
        manifest = {
            "format": archive.ARCHIVE_FORMAT,
            "format_version": archive.FORMAT_VERSION,
            "created_at": timezone.now().isoformat(),
            "source": {
                "schema": schema,
                "name": tenant.name,
                "domains": sorted(tenant.domains.values_list("domain", flat=True)),
                "settings": tenant_settings(tenant),
            },
            "database": _database_facts(cursor),
            "snapshot": snapshot,
            "migrations": _applied_migrations(cursor, schema),
            "audit_chain": _audit_head(cursor, schema),
            "tables": [],
        }

        with archive.ArchiveWriter(path) as writer:
            for table in tables:
                name = table["table"]
                reporter.report(name, 0)
                logger.debug("Exporting table %s.%s", schema, name)
                query = sql.SQL("COPY (SELECT {columns} FROM {table}) TO STDOUT").format(
                    columns=sql.SQL(", ").join(map(sql.Identifier, table["columns"])),
                    table=sql.Identifier(schema, name),
                )
                with cursor.copy(query) as copy:
                    written = writer.add_table(
                        name, (bytes(chunk) for chunk in copy), on_chunk=lambda rows, name=name: reporter.report(name, rows)
                    )
                manifest["tables"].append({**table, **written})
                reporter.report(name, written["rows"], finished=True)
            writer.add_manifest(manifest)
        raw.rollback()
    return manifest


def list_tables(cursor, schema):
    """Return the tables of a schema with their columns, partitions and estimated row counts.

    Partitions are listed under their parent, whose COPY reads them all;
    django_migrations is left out because the manifest's migration state
    replaces it.
    """
    cursor.execute(
        """
        SELECT c.relname, c.oid,
               CASE WHEN c.relkind = 'p' THEN (
                   SELECT COALESCE(sum(GREATEST(child.reltuples, 0)), 0) FROM pg_inherits i
                   JOIN pg_class child ON child.oid = i.inhrelid WHERE i.inhparent = c.oid
               ) ELSE GREATEST(c.reltuples, 0) END
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> %s
        ORDER BY c.relname
        """,
        [schema, _MIGRATIONS_TABLE],
    )
    tables = []
    for name, oid, estimate in cursor.fetchall():
        cursor.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped "
            "AND attgenerated = '' ORDER BY attnum",
            [oid],
        )
        columns = [row[0] for row in cursor.fetchall()]
        cursor.execute(
            "SELECT child.relname, pg_get_expr(child.relpartbound, child.oid) FROM pg_inherits i "
            "JOIN pg_class child ON child.oid = i.inhrelid WHERE i.inhparent = %s ORDER BY child.relname",
            [oid],
        )
        partitions = [{"name": child, "bound": bound} for child, bound in cursor.fetchall()]
        tables.append({"table": name, "columns": columns, "partitions": partitions, "estimate": int(estimate) + 1})
    return tables


def tenant_settings(tenant):
    """Return the tenant row's quotas, policy and other settings by field name, as JSON values."""
    return {
        field.name: field.value_from_object(tenant)
        for field in Tenant._meta.concrete_fields
        if field.name not in _NOT_SETTINGS
    }


def _database_facts(cursor):
    cursor.execute("SELECT current_setting('server_version'), EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')")
    version, timescaledb = cursor.fetchone()
    return {"server_version": version, "timescaledb": timescaledb}


def _applied_migrations(cursor, schema):
    cursor.execute(sql.SQL("SELECT app, name FROM {} ORDER BY app, id").format(sql.Identifier(schema, _MIGRATIONS_TABLE)))
    applied = {}
    for app, name in cursor.fetchall():
        applied.setdefault(app, []).append(name)
    return applied


def _audit_head(cursor, schema):
    cursor.execute(
        sql.SQL("SELECT sequence, hash FROM {} ORDER BY sequence DESC LIMIT 1").format(
            sql.Identifier(schema, AuditEntry._meta.db_table)
        )
    )
    head = cursor.fetchone()
    return {"head_sequence": head[0], "head_hash": head[1]} if head else None


# Restore -------------------------------------------------------------------------


def check_archive(path, *, expected_sha256=None):
    """Verify an archive's checksums and that this deployment can restore it; return its manifest.

    Raises ArchiveInvalid for a damaged or changed archive, and
    ArchiveIncompatible, naming the app and migration, when the archive needs
    a migration or app that this deployment does not have.
    """
    manifest = archive.read_manifest(path)
    archive.verify_members(path, manifest, expected_sha256=expected_sha256)
    _check_migrations(manifest)
    for table in manifest["tables"]:
        for partition in table.get("partitions", []):
            _partition_bound(table["table"], partition)
    return manifest


def _check_migrations(manifest):
    loader = MigrationLoader(None, ignore_no_migrations=True)
    known = set(loader.disk_migrations)
    for migration in loader.disk_migrations.values():
        known.update(migration.replaces)
    labels = {config.label for config in django_apps.get_app_configs()}
    for app, names in sorted(manifest["migrations"].items()):
        if app not in labels:
            raise ArchiveIncompatible(
                f"The archive contains data of app {app!r}, which is not installed in this deployment; install the "
                "ThermaCore release the archive was made with, or a later one."
            )
        for name in names:
            if (app, name) not in known:
                raise ArchiveIncompatible(
                    f"The archive was made after migration {app}.{name}, which this deployment does not have; "
                    "upgrade ThermaCore to a release that contains it, then restore again."
                )


def restore_tenant(path, *, schema_name, domain, name=None, actor=None, expected_sha256=None, progress=None):
    """Restore an archive as a new tenant with schema `schema_name` and primary domain `domain`; return the Tenant.

    The archive is verified first (see check_archive). The new schema is
    migrated to the archive's migration state, loaded with COPY FROM, its
    sequences reset, and then migrated to this deployment's latest state, so
    an archive from an older release is upgraded. A failure at any step
    drops the schema and removes the tenant row and its domain again.
    `progress` is called with a message per step and table.
    """
    report = progress or (lambda message: None)
    try:
        validate_new_schema_name(schema_name)
    except ValidationError as exc:
        raise ValidationError(f"Schema name {schema_name!r} is invalid: {exc.messages[0]}") from None
    validate_domain_name(domain)
    if Tenant.objects.filter(schema_name=schema_name).exists() or schema_exists(schema_name):
        raise ValueError(f"Schema {schema_name!r} already exists; choose another schema name for the restored tenant.")
    if Domain.objects.filter(domain=domain).exists():
        raise ValueError(f"Domain {domain!r} is already used by another tenant; choose another domain.")

    report(f"Verifying {path}")
    manifest = check_archive(path, expected_sha256=expected_sha256)
    source = manifest["source"]
    tenant = _new_tenant(schema_name, name or source["name"], source.get("settings", {}))
    logger.info("Restoring tenant schema=%s from %s (source schema %s)", schema_name, path, source["schema"])
    # A deleted tenant of the same schema name may have left live values, spooled readings or counters.
    delete_tenant_keys(schema_name)

    tenant.save()
    try:
        Domain.objects.create(domain=domain, tenant=tenant, is_primary=True)
        report(f"Creating schema {schema_name} at the archive's migration state")
        create_tenant_schema(tenant)
        _migrate(schema_name, _archive_targets(manifest))
        _load(tenant, path, manifest, actor=actor, report=report)
        report("Migrating to this deployment's latest migrations")
        _migrate(schema_name, None)
        with schema_context(schema_name):
            # Content types and permissions of models newer than the archive.
            emit_post_migrate_signal(verbosity=0, interactive=False, db=connection.alias)
    except BaseException:
        logger.exception("Restoring tenant schema=%s from %s failed; dropping the schema", schema_name, path)
        connection.set_schema_to_public()
        # Drops the schema only when this run created it, never one that appeared meanwhile.
        discard_tenant(tenant)
        raise

    tenant.status = TenantStatus.ACTIVE
    tenant.save(update_fields=["status"])
    TenantLifecycleEvent.objects.create(
        schema_name=schema_name, tenant_name=tenant.name, event="restored", actor=_actor_label(actor),
        detail={
            "source_schema": source["schema"], "domain": domain, "archive": str(path),
            "archive_created_at": manifest.get("created_at"), "rows": sum(t["rows"] for t in manifest["tables"]),
        },
    )
    logger.info("Restored tenant schema=%s domain=%s from %s", schema_name, domain, path)
    return tenant


def _new_tenant(schema_name, name, settings):
    tenant = Tenant(schema_name=schema_name, name=name, status=TenantStatus.PROVISIONING)
    field_names = {field.name for field in Tenant._meta.concrete_fields} - _NOT_SETTINGS
    for field_name, value in settings.items():
        # A setting the archive has but this release dropped is skipped; new fields keep their defaults.
        if field_name in field_names:
            setattr(tenant, field_name, value)
    try:
        tenant.full_clean(exclude=["status"])
    except ValidationError as exc:
        raise ArchiveIncompatible(f"The archive's tenant settings are invalid here: {exc.message_dict}") from None
    # The schema is created and migrated step by step in restore_tenant, not by django-tenants on save.
    tenant.auto_create_schema = False
    return tenant


def _archive_targets(manifest):
    """Return the last applied migration of each app in the archive, as MigrationExecutor targets."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    squashed_by = {
        replaced: key for key, migration in loader.disk_migrations.items() for replaced in migration.replaces
    }
    targets = []
    for app, names in manifest["migrations"].items():
        nodes = {squashed_by.get((app, name), (app, name)) for name in names}
        nodes = {node for node in nodes if node in loader.graph.nodes}
        parents = {parent for node in nodes for parent in loader.graph.node_map[node].parents}
        targets.extend(sorted(nodes - parents))
    return targets


def _migrate(schema_name, targets):
    """Migrate one schema to `targets`, or to the latest migrations when None, as migrate_schemas does."""
    connection.set_schema(schema_name, include_public=False)
    try:
        # The recorder must see this schema alone, or it finds public's django_migrations.
        MigrationRecorder(connection).ensure_schema()
        connection.set_schema(schema_name)
        executor = MigrationExecutor(connection)
        if targets is None:
            targets = executor.loader.graph.leaf_nodes()
        executor.migrate(targets, plan=executor.migration_plan(targets))
    finally:
        connection.set_schema_to_public()


def _load(tenant, path, manifest, *, actor, report):
    schema = tenant.schema_name
    with schema_context(schema), transaction.atomic(), connection.cursor() as cursor:
        raw = cursor.cursor
        _check_columns(raw, schema, manifest)
        _empty_tables(raw, schema, manifest)
        foreign_keys = _drop_foreign_keys(raw, schema)
        for table in manifest["tables"]:
            _create_partitions(raw, schema, table)
            report(f"Loading {table['table']} ({table['rows']} rows)")
            query = sql.SQL("COPY {table} ({columns}) FROM STDIN").format(
                table=sql.Identifier(schema, table["table"]),
                columns=sql.SQL(", ").join(map(sql.Identifier, table["columns"])),
            )
            with raw.copy(query) as copy:
                for chunk in archive.iter_member(path, table["member"]):
                    copy.write(chunk)
            raw.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table["table"])))
            loaded = raw.fetchone()[0]
            if loaded != table["rows"]:
                raise ArchiveInvalid(f"Table {table['table']}: loaded {loaded} rows, but the manifest gives {table['rows']}.")
        report("Checking foreign keys")
        _add_foreign_keys(raw, foreign_keys)
        _reset_sequences(raw, schema)
        source = manifest["source"]
        head = manifest.get("audit_chain") or {}
        # The entry hashes with the new schema name, and apps.audit.verify hashes the
        # entries before it with source_schema, so the restored chain verifies as a whole.
        record_tenant_lifecycle(
            tenant, "restored", actor=actor or Actor.system_job("tenants.restore"),
            detail={
                "source_schema": source["schema"], "source_name": source["name"],
                "archive_created_at": manifest.get("created_at"),
                "source_head_sequence": head.get("head_sequence"), "source_head_hash": head.get("head_hash"),
            },
        )


def _check_columns(cursor, schema, manifest):
    for table in manifest["tables"]:
        cursor.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            [sql.Identifier(schema, table["table"]).as_string(cursor)],
        )
        present = {row[0] for row in cursor.fetchall()}
        if not present:
            raise ArchiveIncompatible(
                f"Table {table['table']} of the archive does not exist at the archive's migration state here; the "
                "source schema had tables that its migrations do not create."
            )
        missing = [column for column in table["columns"] if column not in present]
        if missing:
            raise ArchiveIncompatible(
                f"Table {table['table']} lacks the columns {', '.join(missing)} at the archive's migration state; "
                "the source schema was changed outside its migrations."
            )


def _empty_tables(cursor, schema, manifest):
    # Data migrations may have inserted rows (e.g. defaults) that the archive also contains.
    filled = []
    for table in manifest["tables"]:
        identifier = sql.Identifier(schema, table["table"])
        cursor.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(identifier))
        if cursor.fetchone()[0]:
            filled.append(identifier)
    if filled:
        cursor.execute(sql.SQL("TRUNCATE {} CASCADE").format(sql.SQL(", ").join(filled)))


def _drop_foreign_keys(cursor, schema):
    """Drop the schema's foreign keys and return their definitions for _add_foreign_keys.

    A deferred foreign key queues one trigger event per loaded row in memory
    until commit. Adding the key after the load checks all rows in one join
    instead, as pg_restore does.
    """
    cursor.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype = 'f' AND connamespace = %s::regnamespace AND conparentid = 0 ORDER BY conrelid, conname",
        [sql.Identifier(schema).as_string(cursor)],
    )
    foreign_keys = cursor.fetchall()
    for table, name, _definition in foreign_keys:
        cursor.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.SQL(table), sql.Identifier(name)))
    return foreign_keys


def _add_foreign_keys(cursor, foreign_keys):
    # The table names come from regclass::text and the definitions from pg_get_constraintdef, both valid SQL.
    for table, name, definition in foreign_keys:
        cursor.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(sql.SQL(table), sql.Identifier(name), sql.SQL(definition))
        )


def _create_partitions(cursor, schema, table):
    if not table.get("partitions"):
        return
    cursor.execute(
        "SELECT c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        [schema, table["table"]],
    )
    row = cursor.fetchone()
    if not row or not row[0]:
        # TODO: restoring a natively partitioned archive into TimescaleDB is untested; its hypertable makes chunks itself.
        return
    for partition in table["partitions"]:
        name = partition["name"]
        bound = _partition_bound(table["table"], partition)
        cursor.execute(
            "SELECT c.relispartition AND EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid "
            "AND i.inhparent = to_regclass(%s)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s",
            [sql.Identifier(schema, table["table"]).as_string(cursor), schema, name],
        )
        existing = cursor.fetchone()
        if existing is not None:
            if not existing[0]:
                raise ArchiveInvalid(
                    f"Partition {name!r} of table {table['table']} in the manifest has the name of another table of "
                    "the schema; the manifest was changed."
                )
            continue
        cursor.execute(
            sql.SQL("CREATE TABLE {partition} PARTITION OF {parent} {bound}").format(
                partition=sql.Identifier(schema, name), parent=sql.Identifier(schema, table["table"]), bound=bound,
            )
        )


def _partition_bound(table_name, partition):
    """Return the partition's bound as SQL built from parsed timestamps, never from the manifest's text.

    Accepts only DEFAULT and ``FOR VALUES FROM ('<timestamp>') TO ('<timestamp>')``
    with time zones, as pg_get_expr writes a readings partition's bound.
    """
    bound = partition["bound"]
    if bound == "DEFAULT":
        return sql.SQL("DEFAULT")
    match = _RANGE_BOUND_PATTERN.match(bound)
    limits = None
    if match is not None:
        try:
            limits = [datetime.fromisoformat(value) for value in match.groups()]
        except ValueError:
            limits = None
    if limits is None or any(limit.tzinfo is None for limit in limits) or not limits[0] < limits[1]:
        raise ArchiveInvalid(
            f"Partition {partition['name']!r} of table {table_name} has the bound {bound!r} in the manifest, which "
            "is not DEFAULT or a range of two timestamps with time zone, e.g. FOR VALUES FROM "
            "('2026-01-05 00:00:00+00') TO ('2026-01-06 00:00:00+00'); the manifest was changed."
        )
    return sql.SQL("FOR VALUES FROM ({}) TO ({})").format(sql.Literal(limits[0]), sql.Literal(limits[1]))


def _reset_sequences(cursor, schema):
    """Set every serial and identity sequence of the schema past the largest value in its column."""
    cursor.execute(
        """
        SELECT s.relname, t.relname, a.attname
        FROM pg_class s
        JOIN pg_namespace n ON n.oid = s.relnamespace
        JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass
             AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
        JOIN pg_class t ON t.oid = d.refobjid
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
        WHERE s.relkind = 'S' AND n.nspname = %s
        """,
        [schema],
    )
    for sequence, table, column in cursor.fetchall():
        cursor.execute(
            sql.SQL("SELECT setval(%s, COALESCE((SELECT max({column}) FROM {table}), 0) + 1, false)").format(
                column=sql.Identifier(column), table=sql.Identifier(schema, table)
            ),
            [sql.Identifier(schema, sequence).as_string(cursor)],
        )


# Delete ----------------------------------------------------------------------------


def latest_export(tenant):
    return TenantExport.objects.filter(tenant=tenant, status=ExportStatus.DONE).order_by("-finished_at").first()


def deletion_blockers(tenant, export=None):
    """Return the reasons why `export` (by default the latest completed one) does not cover the tenant's data.

    An empty list means the archive file is still there and no row of the
    schema was inserted, updated or deleted since the export's snapshot.
    """
    export = export or latest_export(tenant)
    if export is None:
        return [f"Tenant {tenant.schema_name!r} has no completed export."]
    blockers = []
    archive_path = Path(export.file_path)
    if not archive_path.is_file():
        blockers.append(f"The archive {archive_path} of export {export.pk} no longer exists.")
    elif archive_path.stat().st_size != export.file_size:
        blockers.append(f"The archive {archive_path} of export {export.pk} changed size since the export.")
    changed = changed_tables(tenant.schema_name, export)
    if changed:
        blockers.append(f"Data changed since export {export.pk} finished at {export.finished_at:%Y-%m-%d %H:%M:%S} UTC in: {', '.join(changed)}.")
    return blockers


def changed_tables(schema, export):
    """Return the tables of `schema` with rows that the export's snapshot did not see, or with rows missing since.

    A row inserted or updated after the snapshot has an xmin that the
    snapshot did not see. A deleted row shows as a lower row count. xmin is
    a 32-bit transaction id, so the comparison is modulo 2^32. It is valid
    for exports younger than about two billion transactions.
    """
    _xmin, snapshot_xmax, in_progress = export.snapshot.split(":")
    xmax = int(snapshot_xmax) % 2**32
    running = [int(xid) % 2**32 for xid in in_progress.split(",") if xid]
    changed = []
    with connection.cursor() as django_cursor:
        cursor = django_cursor.cursor
        current = {table["table"] for table in list_tables(cursor, schema)}
        for table in sorted(current | set(export.row_counts)):
            if table not in current:
                changed.append(f"{table} (dropped)")
                continue
            cursor.execute(
                sql.SQL(
                    "SELECT count(*), count(*) FILTER (WHERE (((xmin::text::bigint - %s) %% 4294967296) + 4294967296) "
                    "%% 4294967296 < 2147483648 OR xmin::text::bigint = ANY(%s)) FROM {}"
                ).format(sql.Identifier(schema, table)),
                [xmax, running],
            )
            total, newer = cursor.fetchone()
            if newer or total != export.row_counts.get(table, 0):
                changed.append(table)
    return changed


def delete_tenant(tenant, *, actor, confirm, skip_export=False):
    """Drop a tenant's schema and remove its row and domains; return the public TenantLifecycleEvent.

    `confirm` must equal the schema name. Unless `skip_export` is set, a
    completed export must cover the current data (see deletion_blockers).
    The schema's tables are locked against writes while this is checked and
    the schema dropped, so no write can slip in between. Raises
    DeletionRejected when a condition is not met.
    """
    schema = tenant.schema_name
    if schema == get_public_schema_name():
        raise DeletionRejected("The public schema is the platform itself and cannot be deleted.")
    if confirm != schema:
        raise DeletionRejected(
            f"Confirmation {confirm!r} does not match the schema name {schema!r}; type the schema name exactly to "
            "delete the tenant."
        )

    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        try:
            _lock_tables(schema)
        except psycopg.errors.LockNotAvailable as exc:
            raise DeletionRejected(
                f"Tenant {schema!r} was not deleted: its tables stayed busy for {DELETE_LOCK_TIMEOUT} ({exc}). Suspend "
                "the tenant so polling and requests stop, then try again."
            ) from exc
        export = None
        if not skip_export:
            export = latest_export(tenant)
            blockers = deletion_blockers(tenant, export)
            if blockers:
                raise DeletionRejected(
                    f"Tenant {schema!r} was not deleted: {' '.join(blockers)} Export it again (export_tenant), or "
                    "delete it without an export by confirming --skip-export."
                )
        domains = sorted(tenant.domains.values_list("domain", flat=True))
        event = TenantLifecycleEvent.objects.create(
            schema_name=schema, tenant_name=tenant.name, event="deleted", actor=_actor_label(actor),
            detail={
                "domains": domains, "skip_export": skip_export,
                "export_id": export.pk if export else None,
                "archive": export.file_path if export else None,
                "archive_sha256": export.checksum if export else None,
            },
        )
        with connection.cursor() as cursor:
            # PostgreSQL rejects dropping a table with deferred foreign key checks still pending in this transaction.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        tenant.delete(force_drop=True)
    logger.info(
        "Deleted tenant schema=%s domains=%s by %s (export %s)",
        schema, ",".join(domains), event.actor, event.detail["export_id"] or "skipped",
    )
    try:
        delete_tenant_keys(schema)
    except redis.RedisError:
        # The tenant is gone already; provisioning or restoring this schema name deletes the keys first.
        logger.exception("Deleting the Redis keys of deleted tenant schema=%s failed", schema)
    return event


def _lock_tables(schema):
    with connection.cursor() as django_cursor:
        cursor = django_cursor.cursor
        cursor.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(DELETE_LOCK_TIMEOUT)))
        tables = [sql.Identifier(schema, table["table"]) for table in list_tables(cursor, schema)]
        if tables:
            cursor.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.SQL(", ").join(tables)))


def _actor_label(actor):
    if actor is None:
        return "system"
    if isinstance(actor, Actor):
        return actor.name or actor.id
    if hasattr(actor, "get_username"):
        return f"platform:{actor.get_username()}"
    return str(actor)
