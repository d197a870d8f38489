"""Every Celery task queued for tenant alpha runs in alpha's schema and never reads or writes beta's.

The list of tasks comes from the Celery app's registry, so a new task fails
``test_every_task_has_isolation_case`` until it gets a case in TENANT_TASKS
or a place in PLATFORM_TASKS. Each task runs through the tenant-aware app
(tenant-schemas-celery): eagerly with ``Task.apply`` inside the test
transaction, and in chains and groups on a real worker thread
(``celery.contrib.testing.worker``) with the Redis broker of the test run.

While a task runs, every query on its thread's connection is recorded with
the schema that connection is on, and the rows of beta's tables are hashed
before and after, so a write through another connection shows too.
"""

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from celery import chain, group
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun, task_prerun
from django.contrib.auth import get_user_model
from django.core.exceptions import ObjectDoesNotExist
from django.db import connection
from django.utils import timezone
from django_tenants.utils import schema_context
from tenant_schemas_celery.task import _shared_storage as tenant_cache_storage

from apps.sensors.samples import Sample
from apps.telemetry import spool
from apps.telemetry.partitions import forget_known_partitions
from apps.tenants.models import Tenant
from tests.factories import SensorFactory
from thermacore.celery import app

# Tasks that run in the public schema by design and pick their tenant from their own job row.
PLATFORM_TASKS = {
    "tenants.provision",
    "tenants.export",
    "tenants.recover_stuck_jobs",
}
# An id that no table of the test database reaches, for tasks that take the id of a tenant's row.
MISSING_ID = 2_000_000_007


@dataclass(frozen=True)
class Case:
    """How to queue one tenant task: its arguments, the exception it may end with, and data it needs.

    ``setup`` runs in alpha's schema before the task, so that the task has work to do there.
    """

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    expected_error: type | None = None
    setup: Callable | None = None


def forget_alpha_partitions():
    # Ingest and the task remember partitions per process; forgetting them makes the task query again.
    forget_known_partitions("alpha")


def spool_readings_of_both_tenants():
    spool.spool("alpha", [Sample(SensorFactory().pk, timezone.now(), 1.0)])
    with schema_context("beta"):
        spool.spool("beta", [Sample(SensorFactory().pk, timezone.now(), 2.0)])


def give_alpha_retention():
    Tenant.objects.filter(schema_name="alpha").update(retention_days=30)
    # tenant-schemas-celery caches tenant rows for CELERY_TASK_TENANT_CACHE_SECONDS.
    tenant_cache_storage.clear()


TENANT_TASKS = {
    "alarms.run_timers": Case(),
    "alarms.requeue_pending_deliveries": Case(),
    # An id alpha does not have: the task must look in alpha only and fail, never find a row of beta.
    "alarms.deliver_notification": Case(args=(MISSING_ID,), expected_error=ObjectDoesNotExist),
    "audit.apply_retention": Case(),
    "audit.delete_old_exports": Case(),
    "audit.write_export": Case(args=(MISSING_ID,)),
    "protocols.poll_due_devices": Case(),
    "protocols.poll_group": Case(args=(MISSING_ID,)),
    "protocols.warn_expiring_certificates": Case(),
    "protocols.refresh_crls": Case(),
    "telemetry.apply_retention": Case(setup=give_alpha_retention),
    "telemetry.ensure_partitions": Case(setup=forget_alpha_partitions),
    "telemetry.replay_spool": Case(setup=spool_readings_of_both_tenants),
    "telemetry.run_csv_import_job": Case(args=(MISSING_ID,)),
    "telemetry.fail_interrupted_csv_imports": Case(),
}


@pytest.fixture(autouse=True)
def _registered_tasks():
    # The worker imports every app's tasks module at start; a test process does not, until asked.
    app.loader.import_default_modules()


def registered_task_names():
    return {name for name in app.tasks if not name.startswith("celery.")}


class QueryRecorder:
    """Record (task name, schema, SQL) of every query run while a task runs, on the task's own thread."""

    def __init__(self):
        self.queries = []
        self.task_schemas = []
        self._lock = threading.Lock()
        self._wrappers = {}

    def _prerun(self, task_id=None, task=None, **kwargs):
        # Connected after tenant-schemas-celery's own task_prerun receiver, so the schema is already switched.
        with self._lock:
            self.task_schemas.append((task.name, connection.schema_name))

        def wrapper(execute, sql, params, many, context):
            with self._lock:
                self.queries.append((task.name, context["connection"].schema_name, sql))
            return execute(sql, params, many, context)

        self._wrappers[task_id] = wrapper
        connection.execute_wrappers.append(wrapper)

    def _postrun(self, task_id=None, **kwargs):
        wrapper = self._wrappers.pop(task_id, None)
        if wrapper in connection.execute_wrappers:
            connection.execute_wrappers.remove(wrapper)

    def __enter__(self):
        task_prerun.connect(self._prerun, weak=False, dispatch_uid="test.celery_isolation.prerun")
        task_postrun.connect(self._postrun, weak=False, dispatch_uid="test.celery_isolation.postrun")
        return self

    def __exit__(self, *exc):
        task_prerun.disconnect(dispatch_uid="test.celery_isolation.prerun")
        task_postrun.disconnect(dispatch_uid="test.celery_isolation.postrun")


def schema_digest(schema):
    """Return a hash of every row of every table in ``schema``, to show that nothing there changed."""
    digest = hashlib.sha256()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT quote_ident(table_name) FROM information_schema.tables "
            "WHERE table_schema = %s AND table_type = 'BASE TABLE' ORDER BY table_name",
            [schema],
        )
        tables = [row[0] for row in cursor.fetchall()]
        for table in tables:
            cursor.execute(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                           f"FROM {connection.ops.quote_name(schema)}.{table} AS t")
            digest.update(f"{table}:{cursor.fetchone()[0]};".encode())
    return digest.hexdigest()


def names_other_schema(sql, schema="beta"):
    return f'"{schema}".' in sql or f" {schema}." in sql


def test_every_task_has_isolation_case():
    names = registered_task_names()

    missing = sorted(names - set(TENANT_TASKS) - PLATFORM_TASKS)
    stale = sorted((set(TENANT_TASKS) | PLATFORM_TASKS) - names)

    assert missing == [], f"Tasks without a case in TENANT_TASKS or PLATFORM_TASKS: {missing}"
    assert stale == [], f"Cases of tasks that are no longer registered: {stale}"


@pytest.mark.parametrize("name", sorted(TENANT_TASKS))
def test_task_runs_in_queued_tenant_only(name, alpha, beta):
    case = TENANT_TASKS[name]
    if case.setup is not None:
        case.setup()
    beta_spooled = spool.pending("beta")
    # The caller's connection is on beta, so only the header can take the task to alpha.
    connection.set_tenant(beta)
    beta_before = schema_digest("beta")

    with QueryRecorder() as recorder:
        result = app.tasks[name].apply(case.args, case.kwargs, headers={"_schema_name": "alpha"})

    if case.expected_error is None:
        assert result.successful(), f"{name} failed: {result.traceback}"
    else:
        assert isinstance(result.result, case.expected_error), f"{name} ended with {result.result!r}"
    assert recorder.task_schemas == [(name, "alpha")]
    assert recorder.queries, f"{name} ran no query, so the check proves nothing"
    assert {schema for _task, schema, _sql in recorder.queries} == {"alpha"}
    assert [sql for _task, _schema, sql in recorder.queries if names_other_schema(sql)] == []
    assert schema_digest("beta") == beta_before
    assert spool.pending("beta") == beta_spooled
    assert connection.schema_name == "beta"


def test_recorder_catches_task_reading_other_schema(alpha, beta):
    """The harness itself: a task that reads beta's schema while queued for alpha is caught."""

    def read_beta():
        with schema_context("beta"):
            return get_user_model().objects.count()

    leaky = app.task(read_beta, name="test.reads_beta", shared=False)
    try:
        with QueryRecorder() as recorder:
            leaky.apply(headers={"_schema_name": "alpha"})
    finally:
        app.tasks.unregister("test.reads_beta")

    assert recorder.task_schemas == [("test.reads_beta", "alpha")]
    assert "beta" in {schema for _task, schema, _sql in recorder.queries}


def test_task_queued_from_tenant_takes_its_schema(alpha):
    """A task queued without headers takes the schema of the caller's connection."""
    with QueryRecorder() as recorder:
        result = app.tasks["alarms.run_timers"].apply()

    assert result.successful(), result.traceback
    assert recorder.task_schemas == [("alarms.run_timers", "alpha")]


def test_eager_chain_and_group_stay_in_tenant(alpha, beta):
    beta_before = schema_digest("beta")
    signatures = [app.signature(name, args=TENANT_TASKS[name].args, immutable=True)
                  for name in ("alarms.run_timers", "telemetry.ensure_partitions", "protocols.poll_group")]

    with QueryRecorder() as recorder:
        chain(*signatures).apply()
        group(*signatures).apply()

    assert [schema for _name, schema in recorder.task_schemas] == ["alpha"] * 6
    assert {schema for _task, schema, _sql in recorder.queries} == {"alpha"}
    assert schema_digest("beta") == beta_before


@pytest.fixture
def celery_worker(django_db_setup, django_db_blocker):
    """A Celery worker thread of the project app on the test run's Redis broker, consuming both queues."""
    app.loader.import_default_modules()
    with django_db_blocker.unblock():
        connection.set_schema_to_public()
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING",
                          queues=["default", "polling"], shutdown_timeout=30):
            yield
        connection.set_schema_to_public()


@pytest.mark.slow
def test_worker_runs_chain_and_group_in_tenant(celery_worker, django_db_blocker):
    names = ("alarms.run_timers", "telemetry.ensure_partitions", "protocols.poll_group")
    finished = threading.Semaphore(0)

    def count_finished(**kwargs):
        finished.release()

    task_postrun.connect(count_finished, weak=False, dispatch_uid="test.celery_isolation.finished")
    try:
        with django_db_blocker.unblock():
            beta_before = schema_digest("beta")
            with QueryRecorder() as recorder:
                with schema_context("alpha"):
                    chain(*(app.signature(name, args=TENANT_TASKS[name].args, immutable=True) for name in names)).delay()
                    group(app.signature(name, args=TENANT_TASKS[name].args, immutable=True) for name in names).delay()
                for _ in range(2 * len(names)):
                    assert finished.acquire(timeout=30), f"worker finished only {recorder.task_schemas}"
            beta_after = schema_digest("beta")
    finally:
        task_postrun.disconnect(dispatch_uid="test.celery_isolation.finished")

    assert sorted(recorder.task_schemas) == sorted((name, "alpha") for name in names * 2)
    assert {schema for _task, schema, _sql in recorder.queries} == {"alpha"}
    assert beta_after == beta_before


@pytest.mark.parametrize("status", ["suspended", "provisioning"])
def test_task_for_inactive_tenant_is_skipped(alpha, status):
    suspended_at = timezone.now() if status == "suspended" else None
    Tenant.objects.filter(schema_name="alpha").update(status=status, suspended_at=suspended_at)
    tenant_cache_storage.clear()
    connection.set_schema_to_public()

    with QueryRecorder() as recorder:
        result = app.tasks["protocols.poll_due_devices"].apply(headers={"_schema_name": "alpha"})
    tenant_cache_storage.clear()

    assert result.successful(), result.traceback
    assert result.result is None
    assert recorder.task_schemas == [("protocols.poll_due_devices", "alpha")]
    assert recorder.queries == []


def test_task_for_active_tenant_runs(alpha):
    tenant_cache_storage.clear()
    connection.set_schema_to_public()

    result = app.tasks["protocols.poll_due_devices"].apply(headers={"_schema_name": "alpha"})

    assert result.successful(), result.traceback
    assert result.result == {"polled": 0, "failed": 0, "samples": 0}
