from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.tenants.models import Tenant
from apps.tenants.services import resume_tenant, suspend_tenant


class Command(BaseCommand):
    help = (
        "Suspend a tenant (logins, API, WebSockets and polling stop; data is kept) or, with --resume, serve it again. "
        "Runs on the platform (public schema)."
    )

    def add_arguments(self, parser):
        parser.add_argument("schema_name", help="Schema name of the tenant, e.g. 'acme'.")
        parser.add_argument("--reason", default="", help="Why the tenant is suspended; stored in its audit log.")
        parser.add_argument("--resume", action="store_true", help="Resume a suspended tenant instead.")
        parser.add_argument("--actor", required=True, help="User name of the platform superuser who acts.")

    def handle(self, *args, **options):
        try:
            tenant = Tenant.objects.get(schema_name=options["schema_name"])
        except Tenant.DoesNotExist:
            raise CommandError(f"No tenant has schema {options['schema_name']!r}; list them in the platform admin.")
        actor = get_user_model().objects.filter(username=options["actor"], is_superuser=True, is_active=True).first()
        if actor is None:
            raise CommandError(f"{options['actor']!r} is not an active platform superuser; pass one with --actor.")

        if options["resume"]:
            changed = resume_tenant(tenant, actor=actor)
            verb = "Resumed" if changed else "Already active:"
        else:
            try:
                changed = suspend_tenant(tenant, actor=actor, reason=options["reason"])
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            verb = "Suspended" if changed else "Already suspended:"
        self.stdout.write(f"{verb} tenant {tenant.schema_name!r}.")
