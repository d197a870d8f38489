from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.db import transaction
from django.utils import timezone

from apps.audit.choices import AuditAction
from apps.audit.mixins import AuditedModelAdminMixin
from apps.audit.services import AuditTarget, record

from .certificates import EXPIRY_WARNING_DAYS, generate_certificate, import_certificate, parse_import, redacted_snapshot
from .models import Certificate, Device, Point
from .profiles import export_profile


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
class CertificateAdmin(admin.ModelAdmin):
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

    def save_model(self, request, obj, form, change):
        # The services validate, store and audit the certificate; the admin only hands over the form.
        stored = form.store(request.user)
        obj.__dict__.update(stored.__dict__)

    def delete_model(self, request, obj):
        with transaction.atomic():
            target, before = AuditTarget.of(obj), redacted_snapshot(obj)
            super().delete_model(request, obj)
            record(AuditAction.OBJECT_DELETED, actor=request.user, obj=target, before=before, request=request)


class PointInline(admin.StackedInline):
    model = Point
    extra = 0
    fieldsets = (
        (None, {"fields": (("sensor", "enabled"), ("scale", "offset"), "last_error")}),
        ("Modbus", {"fields": (("register_type", "address"), ("data_type", "byte_order", "bit"),
                               "scale_factor_address")}),
        ("MQTT", {"fields": ("topic", ("json_path", "timestamp_path"), "sparkplug_metric")}),
        ("OPC UA", {"fields": ("node_id", ("sampling_interval_ms", "deadband"))}),
        ("DNP3", {"fields": (("dnp3_type", "dnp3_index"),)}),
    )
    readonly_fields = ("last_error",)
    autocomplete_fields = ("sensor",)


@admin.register(Device)
class DeviceAdmin(AuditedModelAdminMixin, admin.ModelAdmin):
    list_display = ("name", "protocol", "host", "port", "unit_id", "poll_interval", "enabled", "status", "last_seen")
    list_filter = ("protocol", "enabled", "status")
    search_fields = ("name", "host")
    fieldsets = (
        (None, {"fields": ("name", "protocol", "enabled", ("host", "port"), "timeout")}),
        ("Modbus", {"fields": ("unit_id", "poll_interval")}),
        ("MQTT and OPC UA", {"fields": ("endpoint_path", ("username", "password"), "client_id", "qos",
                                        "tls_ca_file", ("tls_cert_file", "tls_key_file"))}),
        ("OPC UA security", {"fields": (("opcua_security_mode", "opcua_security_policy"), "client_certificate",
                                        "trusted_certificates")}),
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
    actions = ["download_profile"]

    @admin.action(description="Download the device profile (YAML) of one device")
    def download_profile(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one device to download its profile.", messages.ERROR)
            return None
        device = queryset.get()
        response = HttpResponse(export_profile(device), content_type="application/yaml; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="device-{device.pk}-profile.yaml"'
        return response
