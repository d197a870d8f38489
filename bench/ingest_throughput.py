"""Measure sustained ingest through the pipeline against raw COPY of the same rows.

Both runs write the same number of rows, in the same batch sizes, into the
same partitioned readings table of a scratch tenant. The baseline is a bare
binary COPY with no validation, deduplication, cache or subscribers. The
ratio pipeline/COPY is what docs/benchmarks.md records.

    .venv/bin/python bench/ingest_throughput.py --readings 200000 --batch 5000
"""

import argparse
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "thermacore.settings")
os.environ.setdefault("THERMACORE_LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402
from django_tenants.utils import schema_context  # noqa: E402

from apps.sensors.models import Sensor  # noqa: E402
from apps.sensors.samples import Sample  # noqa: E402
from apps.telemetry import latest  # noqa: E402
from apps.telemetry.ingest import ingest  # noqa: E402
from apps.telemetry.partitions import days_between, ensure_partitions  # noqa: E402
from apps.tenants.models import Tenant  # noqa: E402
from apps.tenants.services import provision_tenant  # noqa: E402
from apps.units.models import Site, Unit  # noqa: E402

SCHEMA = "bench_ingest"
START = datetime(2026, 1, 5, tzinfo=timezone.utc)


def make_sensors(count, prefix):
    site, _ = Site.objects.get_or_create(name="Bench site")
    unit, _ = Unit.objects.get_or_create(site=site, name=f"Bench unit {prefix}", defaults={"kind": "boiler"})
    return [
        Sensor.objects.create(unit=unit, name=f"{prefix} {index}", key=f"{prefix}_{index}", quantity="temperature",
                              minimum=-50, maximum=150).id
        for index in range(count)
    ]


def rows(sensor_ids, total):
    """Yield (sensor, time, value) for ``total`` readings, one per sensor per second."""
    for index in range(total):
        sensor_id = sensor_ids[index % len(sensor_ids)]
        yield sensor_id, START + timedelta(seconds=index // len(sensor_ids)), 20.0 + (index % 97) * 0.5


def batches(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_raw_copy(sensor_ids, total, batch_size):
    started = time.perf_counter()
    for batch in batches(rows(sensor_ids, total), batch_size):
        with transaction.atomic(), connection.cursor() as cursor:
            with cursor.copy("COPY telemetry_reading (sensor_id, time, value, quality) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "timestamptz", "float8", "int2"])
                for sensor_id, when, value in batch:
                    copy.write_row((sensor_id, when, value, 0))
    return time.perf_counter() - started


def run_pipeline(sensor_ids, total, batch_size):
    started = time.perf_counter()
    for batch in batches(rows(sensor_ids, total), batch_size):
        result = ingest(SCHEMA, [Sample(sensor_id, when, value) for sensor_id, when, value in batch])
        assert result.accepted == len(batch), result
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=200_000, help="Readings per run.")
    parser.add_argument("--batch", type=int, default=5_000, help="Readings per ingest call or COPY.")
    parser.add_argument("--sensors", type=int, default=100, help="Sensors the readings are spread over.")
    args = parser.parse_args()

    if Tenant.objects.filter(schema_name=SCHEMA).exists():
        Tenant.objects.get(schema_name=SCHEMA).delete(force_drop=True)
    tenant = provision_tenant(schema_name=SCHEMA, name="Ingest benchmark", domain="bench-ingest.localhost",
                              admin_username="bench", admin_password="Bench-password-4711")
    try:
        with schema_context(SCHEMA):
            raw_sensors = make_sensors(args.sensors, "raw")
            pipeline_sensors = make_sensors(args.sensors, "pipe")
            last_day = (START + timedelta(seconds=args.readings // args.sensors)).date()
            ensure_partitions(days_between(START.date(), last_day))
            raw_seconds = run_raw_copy(raw_sensors, args.readings, args.batch)
            pipeline_seconds = run_pipeline(pipeline_sensors, args.readings, args.batch)
    finally:
        connection.set_schema_to_public()
        tenant.delete(force_drop=True)
        latest.clear_latest(SCHEMA)

    raw_rate = args.readings / raw_seconds
    pipeline_rate = args.readings / pipeline_seconds
    print(f"readings={args.readings} batch={args.batch} sensors={args.sensors}")
    print(f"raw COPY:  {raw_rate:12,.0f} readings/s ({raw_seconds:.2f} s)")
    print(f"pipeline:  {pipeline_rate:12,.0f} readings/s ({pipeline_seconds:.2f} s)")
    print(f"ratio pipeline/COPY: {pipeline_rate / raw_rate:.2f}")


if __name__ == "__main__":
    main()
