from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import schema_context

from apps.protocols.certificates import refresh_crls
from apps.tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Fetch a tenant's CRLs from the distribution points of its stored certificates now, as the hourly "
        "task protocols.refresh_crls does, and print the outcome of each URL."
    )

    def add_arguments(self, parser):
        parser.add_argument("--schema", required=True, help="Tenant schema, e.g. 'alpha'.")
        parser.add_argument(
            "--force", action="store_true",
            help="Fetch every URL, also those fetched within the last day whose CRL is not near its next update.",
        )

    def handle(self, *args, **options):
        schema = options["schema"]
        if not Tenant.objects.filter(schema_name=schema).exists():
            raise CommandError(f"Tenant schema {schema!r} does not exist; check --schema.")
        with schema_context(schema):
            outcomes = refresh_crls(force=options["force"])
        for outcome in outcomes:
            crl = f" (CRL {outcome.crl_id})" if outcome.crl_id else ""
            detail = f": {outcome.message}" if outcome.message else ""
            self.stdout.write(f"{outcome.status} {outcome.url or '-'}{crl}{detail}")
        if not outcomes:
            self.stdout.write(f"No stored certificate of {schema!r} names a CRL distribution point.")
