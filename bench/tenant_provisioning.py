"""Measure creating and migrating many tenant schemas, serially and with django-tenants' parallel executor.

Both phases create the same number of tenants (row, domain, schema, all tenant
migrations) in a database of their own, which the run creates first and drops
at the end:

- serial: ``Tenant.save()`` with ``auto_create_schema``, which migrates each new
  schema on its own, as ``provision_tenant`` does;
- parallel: the rows and empty schemas first, then one
  ``migrate_schemas --tenant --executor=multiprocessing`` over all of them,
  with ``TENANT_MULTIPROCESSING_MAX_PROCESSES`` worker processes.

    python bench/tenant_provisioning.py --tenants 100 --processes 2

docs/benchmarks.md records the figures. The database must not be in use: it is
dropped before and after the run.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/bench_tenants"


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=100, help="Tenants created in each phase (default 100).")
    parser.add_argument("--processes", type=int, default=2,
                        help="Worker processes of the parallel executor (default 2).")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL,
                        help=f"Scratch database, created and dropped by the run (default {DEFAULT_DATABASE_URL}).")
    arguments = parser.parse_args()
    if arguments.tenants < 1 or arguments.processes < 1:
        parser.error("--tenants and --processes must be at least 1")
    return arguments


def server_connection(database_url):
    """Connect to the maintenance database of the server with the scratch database."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    name = info.pop("dbname")
    return psycopg.connect(**info, dbname="postgres", autocommit=True), name


def recreate_database(database_url):
    connection, name = server_connection(database_url)
    with connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(database_url):
    connection, name = server_connection(database_url)
    with connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def setup_django(database_url, processes):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ["THERMACORE_DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "thermacore.settings")
    os.environ.setdefault("THERMACORE_LOG_LEVEL", "WARNING")
    import django
    from django.conf import settings

    django.setup()
    settings.TENANT_MULTIPROCESSING_MAX_PROCESSES = processes


def progress(phase, done, total, started):
    if done % 10 == 0 or done == total:
        print(f"  {phase}: {done}/{total} tenants, {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def create_serially(count):
    """Create ``count`` tenants, each migrated as it is saved; return the elapsed seconds."""
    from apps.tenants.models import Domain, Tenant

    started = time.perf_counter()
    for index in range(count):
        tenant = Tenant(schema_name=f"serial_{index:03d}", name=f"Serial {index}")
        tenant.save(verbosity=0)
        Domain.objects.create(domain=f"serial-{index:03d}.localhost", tenant=tenant, is_primary=True)
        progress("serial", index + 1, count, started)
    return time.perf_counter() - started


def create_in_parallel(count):
    """Create ``count`` empty schemas, then migrate them with the multiprocessing executor.

    Return (seconds creating rows and schemas, seconds migrating).
    """
    from django.core.management import call_command
    from django.db import connection

    from apps.tenants.models import Domain, Tenant

    started = time.perf_counter()
    for index in range(count):
        tenant = Tenant(schema_name=f"parallel_{index:03d}", name=f"Parallel {index}")
        tenant.auto_create_schema = False
        tenant.save()
        # The names above are plain identifiers, so quoting them is enough.
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE SCHEMA "{tenant.schema_name}"')
        Domain.objects.create(domain=f"parallel-{index:03d}.localhost", tenant=tenant, is_primary=True)
    created = time.perf_counter() - started
    print(f"  parallel: {count} empty schemas in {created:.1f} s, migrating", file=sys.stderr, flush=True)

    started = time.perf_counter()
    call_command("migrate_schemas", tenant=True, executor="multiprocessing", interactive=False, verbosity=0)
    return created, time.perf_counter() - started


def drop_tenants(prefix):
    from apps.tenants.models import Tenant

    for tenant in Tenant.objects.filter(schema_name__startswith=prefix):
        tenant.delete(force_drop=True)


def main():
    arguments = parse_arguments()
    print(f"Recreating the scratch database of {arguments.database_url}", file=sys.stderr)
    recreate_database(arguments.database_url)
    try:
        setup_django(arguments.database_url, arguments.processes)
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate_schemas", shared=True, interactive=False, verbosity=0)

        serial_seconds = create_serially(arguments.tenants)
        # The parallel run would otherwise also walk the serial schemas.
        drop_tenants("serial_")
        create_seconds, migrate_seconds = create_in_parallel(arguments.tenants)
        parallel_seconds = create_seconds + migrate_seconds
        connections.close_all()
    finally:
        drop_database(arguments.database_url)

    count = arguments.tenants
    print(f"tenants per phase: {count}, parallel worker processes: {arguments.processes}, CPUs: {os.cpu_count()}")
    print(f"{'phase':<42}{'seconds':>10}{'s/tenant':>10}")
    print(f"{'serial (save + migrate each)':<42}{serial_seconds:>10.1f}{serial_seconds / count:>10.2f}")
    print(f"{'parallel: rows and empty schemas':<42}{create_seconds:>10.1f}{create_seconds / count:>10.2f}")
    print(f"{'parallel: migrate_schemas multiprocessing':<42}{migrate_seconds:>10.1f}{migrate_seconds / count:>10.2f}")
    print(f"{'parallel total':<42}{parallel_seconds:>10.1f}{parallel_seconds / count:>10.2f}")
    print(f"serial / parallel: {serial_seconds / parallel_seconds:.2f}")


if __name__ == "__main__":
    main()
