import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.audit.services import Actor
from apps.telemetry.csv_import import CsvImportError, import_readings
from apps.tenants.models import Tenant

COMMAND_ACTOR = "manage.py import_readings"


class Command(BaseCommand):
    help = (
        "Import historical readings from a CSV file into a tenant: columns time,sensor,value[,quality][,fold], "
        "or time[,fold],<sensor id>,<sensor id>,... Times without a UTC offset are local times of the sensor's site."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="Path of the UTF-8 CSV file, or '-' to read standard input.")
        parser.add_argument("--schema", required=True, help="Tenant schema, e.g. 'alpha'.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Check every line against the tenant's sensors and stored history, but store nothing.",
        )

    def handle(self, *args, file, schema, dry_run, **options):
        if not Tenant.objects.filter(schema_name=schema).exclude(schema_name="public").exists():
            raise CommandError(f"Tenant schema {schema!r} not found; list the tenants in the platform admin.")
        try:
            if file == "-":
                report = self._import(sys.stdin, schema, "<stdin>", dry_run)
            else:
                path = Path(file)
                try:
                    handle = path.open(encoding="utf-8-sig", newline="")
                except OSError as exc:
                    raise CommandError(f"Opening {file} failed: {exc.strerror}. Check the path.") from None
                with handle:
                    report = self._import(handle, schema, path.name, dry_run)
        except CsvImportError as exc:
            raise CommandError(str(exc)) from None

        verb = "would be stored" if dry_run else "stored"
        self.stdout.write(
            f"{report.lines} lines ({report.layout} layout) in {report.chunks} chunks: {report.accepted} readings "
            f"{verb}, {report.spooled} spooled, {report.duplicates} duplicates, {report.rejected} rejected."
        )
        for rejection in report.rejections:
            self.stdout.write(f"line {rejection.line}: {rejection.reason}")
        if report.unlisted_rejections:
            self.stdout.write(f"... and {report.unlisted_rejections} more rejected readings not listed.")
        if report.error:
            raise CommandError(report.error)

    def _import(self, text, schema, source, dry_run):
        return import_readings(schema, text, actor=Actor.system_job(COMMAND_ACTOR), source=source, dry_run=dry_run)
