"""Measure tenant export and restore against a bare COPY of the readings table.

A scratch tenant gets ``--readings`` readings over 100 sensors, spread over
ten daily partitions and written with a plain COPY. Then, in the same run:

- baseline: ``COPY (SELECT … FROM telemetry_reading) TO STDOUT`` read and discarded;
- export: ``apps.tenants.backup.export_tenant`` of the whole schema into a ZIP archive;
- restore: ``apps.tenants.backup.restore_tenant`` of that archive under a second schema.

    python bench/tenant_backup.py --readings 1000000
"""

import argparse
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from django.db import connection
from psycopg import sql
from scratch import make_sensors, scratch_tenant

from apps.telemetry.partitions import days_between, ensure_partitions
from apps.tenants.backup import export_tenant, restore_tenant
from apps.tenants.models import Tenant

SCHEMA = "bench_backup"
RESTORED_SCHEMA = "bench_backup_copy"
START = datetime(2026, 1, 5, tzinfo=timezone.utc)
DAYS = 10


def fill_readings(sensor_ids, total):
    step = timedelta(days=DAYS) / (total // len(sensor_ids) + 1)
    ensure_partitions(days_between(START.date(), (START + timedelta(days=DAYS)).date()))
    with connection.cursor() as cursor, cursor.cursor.copy(
        "COPY telemetry_reading (sensor_id, time, value, quality) FROM STDIN"
    ) as copy:
        for index in range(total):
            copy.write_row((sensor_ids[index % len(sensor_ids)], START + step * (index // len(sensor_ids)), 50.0 + index % 40, 0))


def copy_out_seconds(schema):
    started = time.perf_counter()
    raw = connection.get_new_connection(connection.get_connection_params())
    with raw, raw.cursor() as cursor, cursor.copy(
        sql.SQL("COPY (SELECT sensor_id, time, value, quality FROM {}) TO STDOUT").format(
            sql.Identifier(schema, "telemetry_reading")
        )
    ) as copy:
        for _chunk in copy:
            pass
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000, help="Readings in the scratch tenant.")
    arguments = parser.parse_args()

    with scratch_tenant(SCHEMA) as tenant, tempfile.TemporaryDirectory() as directory:
        fill_readings(make_sensors(100, "backup"), arguments.readings)
        connection.set_schema_to_public()

        baseline = copy_out_seconds(SCHEMA)
        archive = Path(directory) / "bench.zip"
        started = time.perf_counter()
        export = export_tenant(tenant, archive)
        export_seconds = time.perf_counter() - started

        started = time.perf_counter()
        try:
            restore_tenant(archive, schema_name=RESTORED_SCHEMA, domain="bench-backup-copy.localhost")
            restore_seconds = time.perf_counter() - started
        finally:
            connection.set_schema_to_public()
            for leftover in Tenant.objects.filter(schema_name=RESTORED_SCHEMA):
                leftover.delete(force_drop=True)

    readings = arguments.readings
    print(f"readings: {readings}, archive: {export.file_size / 1e6:.1f} MB")
    print(f"baseline COPY TO: {baseline:.1f} s ({readings / baseline:,.0f} readings/s)")
    print(f"export: {export_seconds:.1f} s ({readings / export_seconds:,.0f} readings/s, {export_seconds / baseline:.1f} x baseline)")
    print(f"restore: {restore_seconds:.1f} s ({readings / restore_seconds:,.0f} readings/s)")


if __name__ == "__main__":
    main()
