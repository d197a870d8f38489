import sys
from pathlib import Path

from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError
from django_tenants.utils import schema_context

from apps.audit.services import Actor
from apps.protocols.models import Device
from apps.protocols.profiles import ProfileError, apply_profile, export_profile, load_shipped_profile, parse_profile
from apps.protocols.sparkplug_templates import sparkplug_template_json
from apps.tenants.models import Tenant
from apps.units.models import Unit

COMMAND_ACTOR = "manage.py device_profile"
EXPORT_FORMATS = ("yaml", "sparkplug")


class Command(BaseCommand):
    help = (
        "Import a device profile (YAML or JSON) into a device and unit of a tenant, or export a device's points "
        "as a profile or as a Sparkplug B template definition."
    )

    def add_arguments(self, parser):
        subcommands = parser.add_subparsers(dest="action", required=True)
        importing = subcommands.add_parser("import", help="Create or update a device's points from a profile.")
        importing.add_argument("source", help="Profile file path, or 'shipped:<name>' for a profile that ships "
                                              "with ThermaCore, e.g. shipped:eastron_sdm630.")
        importing.add_argument("--schema", required=True, help="Tenant schema, e.g. 'alpha'.")
        importing.add_argument("--device", type=int, required=True, help="Id of the device that gets the points.")
        importing.add_argument("--unit", type=int, required=True, help="Id of the unit that gets the sensors.")
        exporting = subcommands.add_parser(
            "export", help="Write a device's points as a profile or as a Sparkplug B template definition."
        )
        exporting.add_argument("--schema", required=True, help="Tenant schema, e.g. 'alpha'.")
        exporting.add_argument("--device", type=int, required=True, help="Id of the device to export.")
        exporting.add_argument(
            "--format", choices=EXPORT_FORMATS, default="yaml",
            help="'yaml' (default): the device profile; 'sparkplug': the Sparkplug B template definition as JSON, "
                 "the same as the admin's download.",
        )
        exporting.add_argument("--output", help="File to write; default: standard output.")

    def handle(self, *args, **options):
        schema = options["schema"]
        if not Tenant.objects.filter(schema_name=schema).exists():
            raise CommandError(f"Tenant schema {schema!r} does not exist; check --schema.")
        with schema_context(schema):
            if options["action"] == "import":
                self._import(options)
            else:
                self._export(options)

    def _import(self, options):
        profile = self._read_profile(options["source"])
        device = self._get(Device, options["device"], "--device")
        unit = self._get(Unit, options["unit"], "--unit")
        try:
            result = apply_profile(profile, device=device, unit=unit, actor=Actor.system_job(COMMAND_ACTOR))
        except (ProfileError, PermissionDenied) as exc:
            # PermissionDenied covers a tenant quota that the profile would exceed.
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Applied profile {profile.name!r} to device {device.pk} and unit {unit.pk}: "
            f"{result.points_created} points created, {result.points_updated} updated, "
            f"{result.sensors_created} sensors created."
        )

    def _export(self, options):
        device = self._get(Device, options["device"], "--device")
        text = export_profile(device)
        if options["format"] == "sparkplug":
            try:
                text = sparkplug_template_json(parse_profile(text))
            except ProfileError as exc:
                # A device without points, or with points that fail validation, has no template.
                raise CommandError(f"Device {device.pk} has no valid Sparkplug B template: {exc}") from exc
        if options["output"]:
            Path(options["output"]).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text)

    def _read_profile(self, source):
        try:
            if source.startswith("shipped:"):
                return load_shipped_profile(source.removeprefix("shipped:"))
            return parse_profile(Path(source).read_text(encoding="utf-8"))
        except OSError as exc:
            raise CommandError(f"Cannot read profile file {source!r}: {exc}") from exc
        except (ProfileError, LookupError) as exc:
            raise CommandError(f"{source}: {exc}") from exc

    def _get(self, model, pk, option):
        try:
            return model.objects.get(pk=pk)
        except model.DoesNotExist:
            raise CommandError(f"{model._meta.verbose_name.capitalize()} {pk} does not exist in this tenant; check {option}.") from None
