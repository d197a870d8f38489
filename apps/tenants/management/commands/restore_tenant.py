import redis
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from apps.tenants.backup import ArchiveIncompatible, ArchiveInvalid, restore_tenant


class Command(BaseCommand):
    help = (
        "Restore a tenant archive written by export_tenant as a new tenant with its own schema and domain. The "
        "archive's checksums and migrations are checked first; a failure leaves no schema behind."
    )

    def add_arguments(self, parser):
        parser.add_argument("archive", help="Path of the archive file.")
        parser.add_argument("--schema", required=True, help="Schema name of the new tenant, e.g. 'acme2'.")
        parser.add_argument("--domain", required=True, help="Primary domain of the new tenant, e.g. acme2.example.")
        parser.add_argument("--name", default=None, help="Display name of the new tenant; default: the archived name.")
        parser.add_argument(
            "--sha256", default=None,
            help="SHA-256 of the archive as recorded by the export; when given, a changed manifest is detected too.",
        )

    def handle(self, *args, archive, schema, domain, name, sha256, **options):
        try:
            tenant = restore_tenant(
                archive, schema_name=schema, domain=domain, name=name, expected_sha256=sha256,
                progress=lambda message: self.stdout.write(message),
            )
        except (ArchiveInvalid, ArchiveIncompatible, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        except OSError as exc:
            raise CommandError(f"Reading archive {archive} failed: {exc}; check the path and its permissions.") from exc
        except redis.RedisError as exc:
            raise CommandError(
                f"Redis failed while clearing leftover keys of schema {schema!r}: {exc}; start Redis and run again."
            ) from exc
        self.stdout.write(f"Restored tenant {tenant.schema_name!r} ({tenant.name}) at {domain}.")
