from cryptography.hazmat.primitives import hashes
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from apps.audit.mixins import AuditedModelAdminMixin
from apps.units.models import Unit

from .certificates import (
    EXPIRY_WARNING_DAYS,
    find_crl_issuer,
    generate_certificate,
    import_certificate,
    import_crl,
    load_crl,
    parse_import,
    redacted_snapshot,
)
from .models import Certificate, CertificateRevocationList, Device, Point, PollGroup
from .profiles import ProfileError, apply_profile, export_profile, parse_profile, preview_profile
from .sparkplug_templates import sparkplug_template_json


class CertificateAddForm(forms.ModelForm):
    """Generate a key pair and self-signed certificate, or import an uploaded PEM certificate and key."""

    common_name = forms.CharField(
        max_length=64, required=False, help_text="Subject common name of a generated certificate, e.g. 'ThermaCore'."
    )
    days = forms.IntegerField(min_value=1, initial=365, help_text="Validity of a generated certificate in days.")
    certificate_file = forms.FileField(
        required=False, help_text="PEM certificate to import instead of generating one."
    )
    private_key_file = forms.FileField(
        required=False, help_text="Unencrypted PEM private key of the imported certificate; empty to only trust it."
    )

    class Meta:
        model = Certificate
        fields = ("name",)

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("certificate_file") and not cleaned.get("common_name"):
            raise ValidationError("Give a common name to generate a certificate, or upload a certificate file.")
        if cleaned.get("private_key_file") and not cleaned.get("certificate_file"):
            raise ValidationError("A private key file needs its certificate file; upload both.")
        if cleaned.get("certificate_file"):
            key_file = cleaned.get("private_key_file")
            cleaned["certificate_pem"] = cleaned["certificate_file"].read().decode(errors="replace")
            cleaned["private_key_pem"] = key_file.read().decode(errors="replace") if key_file else ""
            try:
                parse_import(cleaned["certificate_pem"], cleaned["private_key_pem"])
            except ValidationError as exc:
                raise ValidationError(exc.messages) from exc
        return cleaned

    def store(self, actor):
        data = self.cleaned_data
        if data.get("certificate_file"):
            return import_certificate(data["name"], data["certificate_pem"], data["private_key_pem"], actor=actor)
        return generate_certificate(data["name"], common_name=data["common_name"], days=data["days"], actor=actor)


@admin.register(Certificate)
class CertificateAdmin(AuditedModelAdminMixin, admin.ModelAdmin):
    list_display = ("name", "subject", "not_valid_after", "expiry", "has_private_key")
    search_fields = ("name", "subject", "fingerprint_sha256")
    readonly_fields = (
        "subject", "application_uri", "fingerprint_sha256", "not_valid_before", "not_valid_after", "expiry",
        "has_private_key", "created_at", "certificate_pem",
    )
    fields = readonly_fields

    @admin.display(description="Expiry")
    def expiry(self, certificate):
        remaining = (certificate.not_valid_after - timezone.now()).days
        if remaining < 0:
            return f"expired {-remaining} days ago"
        if remaining <= EXPIRY_WARNING_DAYS:
            return f"expires in {remaining} days: renew it"
        return f"{remaining} days left"

    @admin.display(boolean=True, description="Private key")
    def has_private_key(self, certificate):
        return certificate.has_private_key

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = CertificateAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "common_name", "days", "certificate_file", "private_key_file")
        return self.fields

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def has_change_permission(self, request, obj=None):
        # A stored certificate is never edited: generate or import a new one instead.
        return False

    def audit_snapshot(self, obj):
        # The mixin records deletes, single and bulk; the encrypted private key stays out of those entries.
        return redacted_snapshot(obj)

    def save_model(self, request, obj, form, change):
        # The services validate, store and audit the certificate; the admin only hands over the form.
        stored = form.store(request.user)
        obj.__dict__.update(stored.__dict__)


class RevocationListAddForm(forms.ModelForm):
    """Upload form of a CRL in PEM or DER form. Its issuer must be a stored certificate whose key signed it."""

    crl_file = forms.FileField(help_text="CRL file (.crl or .pem) published by the CA, PEM or DER.")

    class Meta:
        model = CertificateRevocationList
        fields = ("name",)

    def clean(self):
        cleaned = super().clean()
        upload = cleaned.get("crl_file")
        if upload is not None:
            cleaned["crl_data"] = upload.read()
            try:
                crl = load_crl(cleaned["crl_data"])
                find_crl_issuer(crl)
            except ValidationError as exc:
                raise ValidationError(exc.messages) from exc
            fingerprint = crl.fingerprint(hashes.SHA256()).hex()
            stored = CertificateRevocationList.objects.filter(fingerprint_sha256=fingerprint).first()
            if stored is not None:
                raise ValidationError(f"This CRL is already stored as {stored.name!r}.")
        return cleaned


@admin.register(CertificateRevocationList)
class RevocationListAdmin(AuditedModelAdminMixin, admin.ModelAdmin):
    list_display = ("name", "issuer", "this_update", "next_update", "renewal", "revoked_count")
    search_fields = ("name", "issuer", "fingerprint_sha256")
    readonly_fields = (
        "issuer", "issuer_certificate", "this_update", "next_update", "renewal", "revoked_count", "fingerprint_sha256",
        "distribution_point", "fetched_at", "created_at", "crl_pem",
    )

    @admin.display(description="Renewal")
    def renewal(self, revocation_list):
        if revocation_list.next_update is None:
            return "no next update stated"
        remaining = revocation_list.next_update - timezone.now()
        if remaining.total_seconds() < 0:
            return f"overdue by {-remaining.days} days: upload the issuer's current CRL"
        return f"next update in {remaining.days} days"

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = RevocationListAddForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return ("name", "crl_file") if obj is None else ("name", *self.readonly_fields)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else ("name", *self.readonly_fields)

    def has_change_permission(self, request, obj=None):
        # A stored CRL is never edited: upload the issuer's newer CRL instead.
        return False

    def save_model(self, request, obj, form, change):
        # import_crl validates, stores and audits the CRL. The admin only hands over the upload.
        stored = import_crl(form.cleaned_data["name"], form.cleaned_data["crl_data"], actor=request.user)
        obj.__dict__.update(stored.__dict__)


# Larger uploads are rejected before parsing. The largest shipped profile is far smaller.
MAX_PROFILE_BYTES = 1_000_000


class ProfileImportForm(forms.Form):
    """A profile document, uploaded as a file or carried over from the preview, and the unit of its sensors."""

    unit = forms.ModelChoiceField(
        queryset=Unit.objects.all(), help_text="Unit whose sensors the profile creates or updates."
    )
    profile_file = forms.FileField(required=False, help_text="Profile in YAML or JSON, UTF-8, at most 1 MB.")
    profile_text = forms.CharField(required=False, widget=forms.HiddenInput, strip=False)

    def clean(self):
        cleaned = super().clean()
        upload = cleaned.get("profile_file")
        if upload is not None:
            if upload.size > MAX_PROFILE_BYTES:
                raise ValidationError(
                    f"Profile file {upload.name!r} has {upload.size} bytes, more than {MAX_PROFILE_BYTES}. "
                    "Split it into several profiles."
                )
            try:
                cleaned["profile_text"] = upload.read().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValidationError(
                    f"Profile file {upload.name!r} is not UTF-8 text (invalid byte at offset {exc.start}). "
                    "Save it as UTF-8."
                ) from exc
        if not cleaned.get("profile_text"):
            raise ValidationError("Upload a profile file in YAML or JSON.")
        return cleaned


def profile_download(device):
    response = HttpResponse(export_profile(device), content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="device-{device.pk}-profile.yaml"'
    return response


def sparkplug_download(device):
    """Return the Sparkplug B template of the device's points as a JSON file download."""
    template = sparkplug_template_json(parse_profile(export_profile(device)))
    response = HttpResponse(template, content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="device-{device.pk}-sparkplug-template.json"'
    return response


class ModelMinimumMixin:
    """Give integer form fields the minimum of the model field's own MinValueValidator.

    Django's form field of a PositiveIntegerField has a minimum of 0, so without this an interval of -5
    reports "greater than or equal to 0" and 0 reports the model's "greater than or equal to 1".
    """

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        minimums = [validator.limit_value for validator in db_field.validators
                    if isinstance(validator, MinValueValidator)]
        if minimums and isinstance(db_field, models.IntegerField) and not db_field.choices:
            kwargs.setdefault("min_value", max(minimums))
        return super().formfield_for_dbfield(db_field, request, **kwargs)


class PointInline(ModelMinimumMixin, admin.StackedInline):
    model = Point
    extra = 0
    fieldsets = (
        (None, {"fields": (("sensor", "enabled"), ("scale", "offset"), "last_error")}),
        ("Modbus", {"fields": (("register_type", "address"), ("data_type", "byte_order", "bit"),
                               "scale_factor_address")}),
        ("MQTT", {"fields": ("topic", ("json_path", "timestamp_path"), "sparkplug_metric")}),
        ("OPC UA", {"fields": ("node_id", ("sampling_interval_ms", "deadband"))}),
        ("DNP3", {"fields": (("dnp3_type", "dnp3_index"), ("dnp3_control", "dnp3_operate_mode"),
                             ("dnp3_on_time_ms", "dnp3_off_time_ms"))}),
    )
    readonly_fields = ("last_error",)
    autocomplete_fields = ("sensor",)


@admin.register(Device)
class DeviceAdmin(ModelMinimumMixin, AuditedModelAdminMixin, admin.ModelAdmin):
    list_display = ("name", "protocol", "host", "port", "unit_id", "poll_interval", "enabled", "status", "last_seen")
    list_filter = ("protocol", "enabled", "status")
    search_fields = ("name", "host")
    fieldsets = (
        (None, {"fields": ("name", "protocol", "enabled", ("host", "port"), "timeout")}),
        ("Modbus", {"fields": ("unit_id", ("poll_interval", "poll_group"))}),
        ("MQTT and OPC UA", {"fields": ("endpoint_path", ("username", "password"), "client_id", "qos",
                                        "tls_ca_file", ("tls_cert_file", "tls_key_file"), "tls_verify_hostname")}),
        ("Certificates and OPC UA security", {"fields": (("opcua_security_mode", "opcua_security_policy"),
                                                         "client_certificate", "trusted_certificates")}),
        ("DNP3", {"fields": (("dnp3_master_address", "dnp3_outstation_address"),
                             ("integrity_interval", "event_poll_interval"), "time_sync")}),
        ("Status", {"fields": ("status", "last_seen", "last_error", "last_poll_duration_ms",
                               "consecutive_failures", "error_count", "next_poll_at")}),
    )
    readonly_fields = (
        "status", "last_seen", "last_error", "last_poll_duration_ms", "consecutive_failures", "error_count", "next_poll_at",
    )
    filter_horizontal = ("trusted_certificates",)
    inlines = [PointInline]
    actions = ["download_profile", "download_sparkplug_template"]

    @admin.action(description="Download the device profile (YAML) of one device")
    def download_profile(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one device to download its profile.", messages.ERROR)
            return None
        return profile_download(queryset.get())

    @admin.action(description="Download the Sparkplug B template (JSON) of one device")
    def download_sparkplug_template(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(
                request, "Select exactly one device to download its Sparkplug B template.", messages.ERROR
            )
            return None
        return self._sparkplug_response(request, queryset.get())

    def get_urls(self):
        own = [
            path("<int:device_id>/profile/import/", self.admin_site.admin_view(self.import_profile_view),
                 name="protocols_device_import_profile"),
            path("<int:device_id>/profile/export/", self.admin_site.admin_view(self.export_profile_view),
                 name="protocols_device_export_profile"),
            path("<int:device_id>/profile/sparkplug/", self.admin_site.admin_view(self.export_sparkplug_view),
                 name="protocols_device_export_sparkplug"),
        ]
        return own + super().get_urls()

    def _device_or_404(self, request, device_id, *, change):
        device = Device.objects.filter(pk=device_id).first()
        if device is None:
            raise Http404(f"No device with id {device_id}.")
        allowed = self.has_change_permission(request, device) if change else self.has_view_permission(request, device)
        if not allowed:
            raise PermissionDenied
        return device

    def export_profile_view(self, request, device_id):
        return profile_download(self._device_or_404(request, device_id, change=False))

    def export_sparkplug_view(self, request, device_id):
        return self._sparkplug_response(request, self._device_or_404(request, device_id, change=False))

    def _sparkplug_response(self, request, device):
        try:
            return sparkplug_download(device)
        except ProfileError as exc:
            # A device without points, or with points that fail validation, has no template.
            self.message_user(request, f"Device {device.name!r} has no valid profile to export: {exc}", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:protocols_device_change", args=[device.pk]))

    def import_profile_view(self, request, device_id):
        """Upload a profile, preview the sensors and points it creates or updates, then apply it on confirmation."""
        device = self._device_or_404(request, device_id, change=True)
        form = ProfileImportForm(request.POST or None, request.FILES or None)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "device": device,
            "form": form,
            "title": f"Import a device profile into {device.name}",
            "issues": [],
            "preview": None,
        }
        if request.method != "POST" or not form.is_valid():
            return TemplateResponse(request, "protocols/admin/import_profile.html", context)

        unit, text = form.cleaned_data["unit"], form.cleaned_data["profile_text"]
        try:
            profile = parse_profile(text)
            if "apply" in request.POST:
                result = apply_profile(profile, device=device, unit=unit, actor=request.user)
            else:
                context["preview"] = preview_profile(profile, device=device, unit=unit)
        except ProfileError as exc:
            context["issues"] = exc.issues
            return TemplateResponse(request, "protocols/admin/import_profile.html", context)
        if "apply" not in request.POST:
            context["profile"] = profile
            context["confirm_form"] = ProfileImportForm(initial={"unit": unit.pk, "profile_text": text})
            return TemplateResponse(request, "protocols/admin/import_profile.html", context)

        self.message_user(request, (
            f"Profile {profile.name!r} applied to unit {unit}: {result.sensors_created} sensors created, "
            f"{result.sensors_updated} updated, {result.points_created} points created, "
            f"{result.points_updated} updated."
        ), messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:protocols_device_change", args=[device.pk]))


@admin.register(PollGroup)
class PollGroupAdmin(ModelMinimumMixin, AuditedModelAdminMixin, admin.ModelAdmin):
    """Poll groups of the tenant; saving one updates its beat entry, which beat reads without a restart."""

    list_display = ("name", "interval", "enabled", "device_count")
    list_editable = ("interval", "enabled")
    search_fields = ("name",)
    fields = ("name", "interval", "enabled")

    @admin.display(description="Devices")
    def device_count(self, group):
        return group.devices.count()


# Tenant admins schedule polling through poll groups only. django-celery-beat's own admin pages
# would let them send any task with any arguments, so they are removed from the admin.
for beat_model in (PeriodicTask, IntervalSchedule, CrontabSchedule, SolarSchedule, ClockedSchedule):
    if admin.site.is_registered(beat_model):
        admin.site.unregister(beat_model)
