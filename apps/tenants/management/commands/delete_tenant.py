from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.tenants.backup import DeletionRejected, delete_tenant
from apps.tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Delete a tenant: drop its schema and remove its domains. Rejected unless a completed export covers its "
        "current data, or --skip-export is given. Asks to type the schema name unless --confirm gives it."
    )

    def add_arguments(self, parser):
        parser.add_argument("schema_name", help="Schema name of the tenant, e.g. 'acme'.")
        parser.add_argument("--actor", required=True, help="User name of the platform superuser who acts.")
        parser.add_argument("--confirm", default=None, help="The schema name again, to confirm without a prompt.")
        parser.add_argument(
            "--skip-export", action="store_true",
            help="Delete even though no export covers the current data; the data is then lost.",
        )

    def handle(self, *args, schema_name, actor, confirm, skip_export, **options):
        tenant = Tenant.objects.filter(schema_name=schema_name).first()
        if tenant is None:
            raise CommandError(f"No tenant has schema {schema_name!r}; list them in the platform admin.")
        user = get_user_model().objects.filter(username=actor, is_superuser=True, is_active=True).first()
        if user is None:
            raise CommandError(f"{actor!r} is not an active platform superuser; pass one with --actor.")
        if confirm is None:
            warning = " WITHOUT an export: its data will be lost" if skip_export else ""
            try:
                confirm = input(f"Delete tenant {schema_name!r}{warning}? Type the schema name to confirm: ")
            except EOFError:
                raise CommandError("No confirmation given; pass --confirm with the schema name.") from None

        try:
            event = delete_tenant(tenant, actor=user, confirm=confirm.strip(), skip_export=skip_export)
        except DeletionRejected as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Deleted tenant {schema_name!r} (domains: {', '.join(event.detail['domains']) or 'none'}).")
