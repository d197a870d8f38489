import getpass

import redis
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from apps.tenants.services import provision_tenant


class Command(BaseCommand):
    help = "Create a tenant with its own schema, a domain and a first admin user."

    def add_arguments(self, parser):
        parser.add_argument("schema_name", help="PostgreSQL schema name, e.g. 'acme'.")
        parser.add_argument("domain", help="Host name of the tenant, e.g. 'acme.localhost'.")
        parser.add_argument("--name", help="Display name of the tenant (default: the schema name).")
        parser.add_argument("--admin-username", default="admin", help="User name of the first admin.")
        parser.add_argument("--admin-email", default="", help="E-mail address of the first admin.")
        parser.add_argument(
            "--admin-password",
            help="Password of the first admin; prompted for when omitted and a terminal is attached.",
        )

    def handle(self, *args, **options):
        password = options["admin_password"]
        if not password:
            try:
                password = getpass.getpass(f"Password for {options['admin_username']}: ")
            except EOFError:
                raise CommandError("No password given; pass --admin-password or run the command in a terminal.") from None
        try:
            tenant = provision_tenant(
                schema_name=options["schema_name"],
                name=options["name"] or options["schema_name"],
                domain=options["domain"],
                admin_username=options["admin_username"],
                admin_password=password,
                admin_email=options["admin_email"],
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except redis.RedisError as exc:
            raise CommandError(f"Redis failed while clearing leftover keys of the schema: {exc}; start Redis and run again.") from exc
        self.stdout.write(
            self.style.SUCCESS(f"Created tenant {tenant.schema_name!r} at {options['domain']}.")
        )
