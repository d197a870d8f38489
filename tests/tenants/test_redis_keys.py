"""A deleted tenant's Redis keys go with it, so a new tenant of the same schema name starts empty."""

import pytest
from django.core.cache import cache
from django.db import connection
from django_tenants.utils import schema_context

from apps.telemetry import latest, spool
from apps.tenants.backup import delete_tenant
from apps.tenants.models import Domain, Tenant
from apps.tenants.redis_keys import delete_tenant_keys
from tests.tenants.test_platform_api import platform  # noqa: F401


def _bare_tenant(schema):
    tenant = Tenant(schema_name=schema, name=schema.title())
    tenant.auto_create_schema = False
    tenant.save()
    Domain.objects.create(domain=f"{schema}.localhost", tenant=tenant, is_primary=True)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
    return tenant


def _fill_redis(schema):
    """Write the kinds of per-tenant Redis state the portal keeps, and return the raw keys written."""
    client = latest.get_client()
    client.hset(latest.cache_key(schema), "1", "1700000000000|21.5|0")
    client.xadd(spool.spool_key(schema), {"samples": "[]"})
    client.incrby(f"thermacore:{schema}:live:dropped", 3)
    client.sadd(f"asgi:group:{schema}.unit.1", "specific.abc!def")
    with schema_context(schema):
        cache.set("alarms:delivery-requeues:1", (1, 0.0), timeout=600)
        cache.set(f"throttle:{schema}:tenant_user:user:1", [1.0], timeout=600)
        cache.set(f"jwt:{schema}:ended-login:abc", 1, timeout=600)
    return sorted(key.decode() for key in client.scan_iter(match=f"*{schema}*"))


def _keys_of(schema):
    return sorted(key.decode() for key in latest.get_client().scan_iter(match=f"*{schema}*"))


@pytest.fixture
def clean_redis():
    latest.get_client().flushdb()
    yield
    latest.get_client().flushdb()


def test_fill_writes_every_kind_of_key(db, clean_redis):
    written = _fill_redis("zeta")

    assert len(written) == 7


def test_delete_tenant_removes_its_keys(platform, clean_redis):
    tenant = _bare_tenant("zeta")
    _fill_redis("zeta")
    kept = _fill_redis("zeta2")

    delete_tenant(tenant, actor=platform["staff"], confirm="zeta", skip_export=True)

    assert [key for key in _keys_of("zeta") if "zeta2" not in key] == []
    assert _keys_of("zeta2") == kept


def test_delete_keys_spares_schema_named_like_prefix(db, clean_redis):
    kept = _fill_redis("alpha")

    # A schema called "thermacore" or "asgi" must not match the keys of every tenant.
    for schema in ("thermacore", "asgi", "throttle", "jwt"):
        delete_tenant_keys(schema)

    assert _keys_of("alpha") == kept


def test_deleted_keys_show_no_old_values(db, clean_redis):
    _fill_redis("zeta")

    delete_tenant_keys("zeta")

    assert latest.get_latest("zeta", [1]) == {}
    assert spool.pending("zeta") == 0
    assert _keys_of("zeta") == []
