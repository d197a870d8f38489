"""Measure a CSV import of historical readings against raw COPY of the same rows.

The import parses each line, checks it against the sensor's range and the
site's time zone and hands chunks of 5,000 readings to the one ingest path,
as `POST /api/v1/ingest/csv/jobs/` and `manage.py import_readings` do. The
baseline writes the same number of rows with a bare binary COPY in chunks of
the same size, into the same partitioned table of a scratch tenant. Both
work from lines and rows built before the clock starts.

    python bench/csv_import.py --lines 400000
"""

import argparse
import time
from datetime import timedelta

from ingest_throughput import START, batches, raw_copy, rows
from scratch import make_sensors, scratch_tenant

from apps.audit.services import Actor
from apps.telemetry.csv_import import CHUNK_SIZE, import_readings
from apps.telemetry.partitions import days_between, ensure_partitions

SCHEMA = "bench_csv"


def csv_lines(sensor_ids, total):
    """Return the header and ``total`` lines of the long layout (time,sensor,value), times in UTC."""
    lines = ["time,sensor,value\n"]
    for sensor_id, when, value in rows(sensor_ids, total):
        lines.append(f"{when.strftime('%Y-%m-%dT%H:%M:%SZ')},{sensor_id},{value}\n")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=400_000, help="Data lines, one reading each, per run.")
    parser.add_argument("--sensors", type=int, default=100, help="Sensors the readings are spread over.")
    args = parser.parse_args()

    with scratch_tenant(SCHEMA):
        raw_sensors = make_sensors(args.sensors, "raw")
        csv_sensors = make_sensors(args.sensors, "csv")
        last_day = (START + timedelta(seconds=args.lines // args.sensors)).date()
        ensure_partitions(days_between(START.date(), last_day))
        raw_batches = list(batches(rows(raw_sensors, args.lines), CHUNK_SIZE))
        lines = csv_lines(csv_sensors, args.lines)

        started = time.perf_counter()
        for batch in raw_batches:
            raw_copy(batch)
        raw_seconds = time.perf_counter() - started

        started = time.perf_counter()
        report = import_readings(SCHEMA, lines, actor=Actor.system_job("bench.csv_import"), source="bench")
        csv_seconds = time.perf_counter() - started
        assert report.accepted == args.lines, report.as_dict()

    raw_rate = args.lines / raw_seconds
    csv_rate = args.lines / csv_seconds
    print(f"lines={args.lines} sensors={args.sensors} chunk={CHUNK_SIZE}")
    print(f"raw COPY:   {raw_rate:12,.0f} readings/s ({raw_seconds:.2f} s)")
    print(f"CSV import: {csv_rate:12,.0f} lines/s ({csv_seconds:.2f} s)")
    print(f"ratio CSV import/COPY: {csv_rate / raw_rate:.2f}")


if __name__ == "__main__":
    main()
