from django.core.management.base import BaseCommand, CommandError

from apps.tenants.backup import export_tenant
from apps.tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Export a whole tenant (every table of its schema and its settings) to one archive file, printing progress "
        "per table. The tenant keeps running: the archive is one consistent snapshot."
    )

    def add_arguments(self, parser):
        parser.add_argument("schema_name", help="Schema name of the tenant, e.g. 'acme'.")
        parser.add_argument("--output", required=True, help="Path of the archive to write, e.g. acme.zip; must not exist.")
        parser.add_argument("--actor", default="", help="User name recorded as the requester of the export.")

    def handle(self, *args, schema_name, output, actor, **options):
        tenant = Tenant.objects.filter(schema_name=schema_name).first()
        if tenant is None:
            raise CommandError(f"No tenant has schema {schema_name!r}; list them in the platform admin.")

        def show(progress):
            if progress.table_finished:
                self.stdout.write(
                    f"[{progress.percent:3d}%] {progress.table}: {progress.table_rows} rows "
                    f"({progress.tables_done}/{progress.tables_total} tables)"
                )

        try:
            export = export_tenant(tenant, output, progress=show, requested_by=actor or "manage.py export_tenant")
        except (FileExistsError, FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"Writing archive {output} failed: {exc}; choose a writable output file.") from exc
        self.stdout.write(
            f"Exported tenant {schema_name!r} to {export.file_path}: {export.rows_written} rows, "
            f"{export.file_size} bytes, SHA-256 {export.checksum}"
        )
