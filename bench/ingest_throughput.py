"""Measure sustained ingest through the pipeline against raw COPY of the same rows.

Both runs write the same number of rows, in the same batch sizes, into the
same partitioned readings table of a scratch tenant. The baseline is a bare
binary COPY with no validation, deduplication, cache or subscribers. The
ratio pipeline/COPY is what docs/benchmarks.md records. The pipeline runs
with its subscribers (live-value cache, alarm evaluation, WebSocket push),
as in production; the scratch tenant has no alarm rules.

    python bench/ingest_throughput.py --readings 200000 --batch 5000
"""

import argparse
import time
from datetime import datetime, timedelta, timezone

from django.db import connection, transaction
from scratch import make_sensors, scratch_tenant

from apps.sensors.samples import Sample
from apps.telemetry.ingest import ingest
from apps.telemetry.partitions import days_between, ensure_partitions

SCHEMA = "bench_ingest"
START = datetime(2026, 1, 5, tzinfo=timezone.utc)


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


def raw_copy(batch):
    with transaction.atomic(), connection.cursor() as cursor:
        with cursor.copy("COPY telemetry_reading (sensor_id, time, value, quality) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "timestamptz", "float8", "int2"])
            for sensor_id, when, value in batch:
                copy.write_row((sensor_id, when, value, 0))


def pipeline(batch):
    result = ingest(SCHEMA, batch)
    assert result.accepted == len(batch), result


def run_interleaved(raw_sensors, pipeline_sensors, total, batch_size):
    """Time raw COPY and the pipeline batch by batch, alternating, and return the seconds of each.

    Alternating gives both the same table size and the same load from other
    processes on a shared machine. Rows and samples are built before the
    clock starts, so neither side pays for the generator.
    """
    raw_batches = list(batches(rows(raw_sensors, total), batch_size))
    pipeline_batches = [
        [Sample(sensor_id, when, value) for sensor_id, when, value in batch]
        for batch in batches(rows(pipeline_sensors, total), batch_size)
    ]
    raw_seconds = pipeline_seconds = 0.0
    for raw_batch, pipeline_batch in zip(raw_batches, pipeline_batches):
        started = time.perf_counter()
        raw_copy(raw_batch)
        raw_seconds += time.perf_counter() - started
        started = time.perf_counter()
        pipeline(pipeline_batch)
        pipeline_seconds += time.perf_counter() - started
    return raw_seconds, pipeline_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=200_000, help="Readings per run.")
    parser.add_argument("--batch", type=int, default=5_000, help="Readings per ingest call or COPY.")
    parser.add_argument("--sensors", type=int, default=100, help="Sensors the readings are spread over.")
    args = parser.parse_args()

    with scratch_tenant(SCHEMA):
        raw_sensors = make_sensors(args.sensors, "raw")
        pipeline_sensors = make_sensors(args.sensors, "pipe")
        last_day = (START + timedelta(seconds=args.readings // args.sensors)).date()
        ensure_partitions(days_between(START.date(), last_day))
        raw_seconds, pipeline_seconds = run_interleaved(raw_sensors, pipeline_sensors, args.readings, args.batch)

    raw_rate = args.readings / raw_seconds
    pipeline_rate = args.readings / pipeline_seconds
    print(f"readings={args.readings} batch={args.batch} sensors={args.sensors}")
    print(f"raw COPY:  {raw_rate:12,.0f} readings/s ({raw_seconds:.2f} s)")
    print(f"pipeline:  {pipeline_rate:12,.0f} readings/s ({pipeline_seconds:.2f} s)")
    print(f"ratio pipeline/COPY: {pipeline_rate / raw_rate:.2f}")


if __name__ == "__main__":
    main()
