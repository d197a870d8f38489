"""Management commands of apps.tenants turn bad input into a CommandError with a message, never a traceback."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django_tenants.utils import schema_exists

from apps.tenants.models import Domain, Tenant


@pytest.fixture
def no_terminal(monkeypatch):
    """Standard input that is at its end at once, as under cron or with `< /dev/null`."""
    monkeypatch.setattr("sys.stdin", io.StringIO(""))


@pytest.mark.parametrize("domain", ["http://platform.localhost", "platform.localhost:8000", "Platform.localhost"])
def test_setup_platform_rejects_invalid_domain(db, domain):
    with pytest.raises(CommandError, match="is not a host name"):
        call_command("setup_platform", "--domain", domain)

    assert not Domain.objects.filter(domain=domain).exists()


def test_provision_without_password_input(db, no_terminal):
    with pytest.raises(CommandError, match="--admin-password"):
        call_command("provision_tenant", "eta", "eta.localhost")

    assert not Tenant.objects.filter(schema_name="eta").exists()


@pytest.mark.parametrize("schema_name", ["information_schema", "public", "pg_temp"])
def test_provision_rejects_reserved_schema(db, schema_name):
    with pytest.raises(CommandError, match=repr(schema_name)):
        call_command("provision_tenant", schema_name, "eta.localhost", "--admin-password", "Boiler-room-key-5519")

    assert not Tenant.objects.filter(domains__domain="eta.localhost").exists()


def test_delete_without_confirmation_input(db, no_terminal):
    connection.set_schema_to_public()
    superuser = get_user_model().objects.create_superuser(username="cmd-operator", password="Plant-room-key-8842")

    with pytest.raises(CommandError, match="--confirm"):
        call_command("delete_tenant", "alpha", "--actor", superuser.username)

    assert schema_exists("alpha")


def test_restore_rejects_missing_archive(db, tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        call_command("restore_tenant", str(tmp_path / "none.zip"), "--schema", "eta", "--domain", "eta.localhost")


def test_restore_rejects_non_archive(db, tmp_path):
    text = tmp_path / "notes.zip"
    text.write_text("not a zip file")

    with pytest.raises(CommandError, match="not a valid ZIP file"):
        call_command("restore_tenant", str(text), "--schema", "eta", "--domain", "eta.localhost")
