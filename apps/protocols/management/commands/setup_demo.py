"""Set up the demo tenant that watches the plant simulator."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import schema_context

from apps.accounts.choices import Role
from apps.protocols.simulator.demo import configure_demo_plant
from apps.tenants.models import Tenant
from apps.tenants.services import provision_tenant


class Command(BaseCommand):
    help = (
        "Create the demo tenant (if missing) with its admin user and a plant that polls the simulator. "
        "The admin password comes from THERMACORE_DEMO_PASSWORD or is generated and printed."
    )

    def add_arguments(self, parser):
        parser.add_argument("--schema", default="demo", help="Schema name of the demo tenant.")
        parser.add_argument("--domain", default="demo.localhost", help="Host name of the demo tenant.")
        parser.add_argument("--password", default="", help="Admin password (default: generated).")
        parser.add_argument("--simulator-host", default="127.0.0.1", help="Host the simulator listens on.")
        parser.add_argument("--simulator-port", type=int, default=5020, help="TCP port the simulator listens on.")
        parser.add_argument("--poll-interval", type=float, default=2.0, help="Seconds between polls of each unit.")

    def handle(self, *args, **options):
        schema = options["schema"]
        password = options["password"] or os.environ.get("THERMACORE_DEMO_PASSWORD") or secrets.token_urlsafe(12)
        if not Tenant.objects.filter(schema_name=schema).exists():
            provision_tenant(
                schema_name=schema, name="Demo plant", domain=options["domain"],
                admin_username="admin", admin_password=password,
            )
        else:
            # The old password cannot be shown again, so a rerun sets the new one.
            with schema_context(schema):
                user, _ = get_user_model().objects.get_or_create(username="admin", defaults={"is_staff": True})
                user.set_password(password)
                user.is_active = True
                user.role = Role.ADMIN
                user.save(update_fields=["password", "is_active", "role"])
        with schema_context(schema):
            try:
                configure_demo_plant(
                    host=options["simulator_host"], port=options["simulator_port"],
                    poll_interval=options["poll_interval"],
                )
            except Exception as exc:
                raise CommandError(f"Configuring the demo plant in schema {schema!r} failed: {exc}") from exc
        self.stdout.write(f"Demo tenant {schema!r} at http://{options['domain']}:8000/")
        self.stdout.write(f"  user: admin  password: {password}")
