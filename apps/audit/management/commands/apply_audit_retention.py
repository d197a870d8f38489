from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import get_public_schema_name, get_tenant_model, schema_context

from apps.audit.exports import ExportFormat
from apps.audit.retention import apply_retention


class Command(BaseCommand):
    help = (
        "Archive the audit entries older than each tenant's retention_days to a file with a manifest, then drop "
        "them and record the drop in the chain. Tenants without retention_days keep every entry."
    )

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--schema", help="Schema name of the tenant, e.g. alpha.")
        target.add_argument("--all", action="store_true", help="Every tenant.")
        parser.add_argument("--directory", help="Archive directory; default: the AUDIT_ARCHIVE_DIR setting.")
        parser.add_argument("--format", choices=ExportFormat.ALL, default=ExportFormat.JSON,
                            help="File format of the archive (default json).")

    def handle(self, *args, schema=None, all=False, directory=None, format=ExportFormat.JSON, **options):
        tenants = get_tenant_model().objects.exclude(schema_name=get_public_schema_name())
        if schema and not tenants.filter(schema_name=schema).exists():
            known = ", ".join(tenants.values_list("schema_name", flat=True)) or "none"
            raise CommandError(f"No tenant has schema {schema!r}; known tenant schemas: {known}.")
        schemas = [schema] if schema else list(tenants.order_by("schema_name").values_list("schema_name", flat=True))

        for name in schemas:
            with schema_context(name):
                entry = apply_retention(directory=directory, export_format=format)
            if entry is None:
                self.stdout.write(f"{name}: nothing to drop")
            else:
                detail = entry.detail
                self.stdout.write(
                    f"{name}: dropped entries {detail['first_sequence']} to {detail['through_sequence']}, "
                    f"archive {detail['archive_file']} (SHA-256 {detail['archive_sha256']}), recorded as entry "
                    f"{entry.sequence}"
                )
