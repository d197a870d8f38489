"""Create the configured PostgreSQL database when it does not exist yet."""

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql


class Command(BaseCommand):
    help = "Create the database named in THERMACORE_DATABASE_URL if it is missing (platform level, no tenant)."

    def handle(self, *args, **options):
        db = settings.DATABASES["default"]
        params = {
            "host": db.get("HOST") or None,
            "port": db.get("PORT") or None,
            "user": db.get("USER") or None,
            "password": db.get("PASSWORD") or None,
        }
        target = f"{params['host'] or 'local socket'}:{params['port'] or 5432}"
        try:
            with psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=5, **params) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone()
                if exists:
                    self.stdout.write(f"Database {db['NAME']!r} exists on {target}.")
                    return
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
        except psycopg.OperationalError as exc:
            raise CommandError(
                f"Cannot reach PostgreSQL at {target}: {exc}. Start it (scripts/services.sh does on Debian) "
                "or point THERMACORE_DATABASE_URL at a running server."
            ) from exc
        self.stdout.write(self.style.SUCCESS(f"Created database {db['NAME']!r} on {target}."))
