from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from apps.tenants.services import ensure_public_tenant


class Command(BaseCommand):
    help = "Serve the platform admin (tenants and domains) on a host name of the public schema."

    def add_arguments(self, parser):
        parser.add_argument("--domain", default="localhost", help="Host name of the platform admin.")

    def handle(self, *args, **options):
        try:
            ensure_public_tenant(options["domain"])
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Platform admin at http://{options['domain']}:8000/admin/")
