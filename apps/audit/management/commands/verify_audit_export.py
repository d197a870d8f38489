from django.core.management.base import BaseCommand, CommandError

from apps.audit.chain import ExportInvalid, verify_export


class Command(BaseCommand):
    help = (
        "Verify an exported audit file (CSV or JSON) against its manifest: the file's SHA-256, every entry's "
        "hash, the links between entries and the chain hashes at both ends. Needs no database."
    )
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("export", help="Path of the exported .csv or .json file.")
        parser.add_argument("manifest", help="Path of the manifest JSON downloaded for that export.")

    def handle(self, *args, export, manifest, **options):
        try:
            summary = verify_export(export, manifest)
        except FileNotFoundError as exc:
            raise CommandError(f"{exc.filename} not found; give the paths of the export and of its manifest.") from exc
        except ExportInvalid as exc:
            raise CommandError(f"Export invalid: {exc}", returncode=1) from exc
        self.stdout.write(summary)
