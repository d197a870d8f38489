"""Serializers of the platform API: tenants, their settings and provisioning jobs."""

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from .backup_models import TenantExport, TenantLifecycleEvent
from .choices import ProvisioningStep
from .models import ProvisioningJob, Tenant
from .services import TENANT_SETTING_FIELDS
from .validators import validate_domain_name, validate_new_schema_name, validate_time_zone

# Settings a provisioning request may give besides the name and time zone, which are fields of their own.
CREATION_SETTING_FIELDS = tuple(name for name in TENANT_SETTING_FIELDS if name not in ("name", "time_zone"))


class RejectUnknownFieldsMixin:
    """Reject a request body with fields this serializer does not accept, naming them, instead of ignoring them.

    A misspelt or read-only field would otherwise be dropped silently, and
    the client would believe it had set it.
    """

    def to_internal_value(self, data):
        if isinstance(data, dict):
            writable = {name for name, field in self.fields.items() if not field.read_only}
            unknown = sorted(set(data) - writable)
            if unknown:
                read_only = [name for name in unknown if name in self.fields or name in self.read_only_names()]
                others = [name for name in unknown if name not in read_only]
                errors = {}
                for name in read_only:
                    errors[name] = [f"Field {name!r} is read-only here; send only {', '.join(sorted(writable))}."]
                for name in others:
                    errors[name] = [f"Unknown field {name!r}; send only {', '.join(sorted(writable))}."]
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)

    def read_only_names(self):
        """Return names the client may see but not set, e.g. a tenant's schema name on PATCH."""
        return ()


class TenantSerializer(serializers.ModelSerializer):
    """A tenant as platform staff see it: state, domains, quotas and security policy."""

    domains = serializers.SerializerMethodField()

    class Meta:
        model = Tenant
        fields = (
            "schema_name", "status", "suspended_at", "suspension_reason", "created_at", "domains",
            *TENANT_SETTING_FIELDS,
        )
        read_only_fields = fields

    def get_domains(self, tenant) -> list[str]:
        return [domain.domain for domain in tenant.domains.order_by("-is_primary", "domain")]


class TenantSettingsSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):
    """The fields platform staff may change on an existing tenant; the model's validators apply."""

    class Meta:
        model = Tenant
        fields = TENANT_SETTING_FIELDS

    def read_only_names(self):
        return TenantSerializer.Meta.fields


class CreationSettingsSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):
    """Quotas and security policy given with a provisioning request; omitted fields keep their defaults."""

    class Meta:
        model = Tenant
        fields = CREATION_SETTING_FIELDS


class TenantCreateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """A request to provision a tenant with its primary domain and first admin."""

    schema_name = serializers.CharField(max_length=63, validators=[validate_new_schema_name])
    name = serializers.CharField(max_length=200)
    domain = serializers.CharField(max_length=253, validators=[validate_domain_name])
    time_zone = serializers.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    admin_username = serializers.CharField(max_length=150)
    admin_password = serializers.CharField(write_only=True, style={"input_type": "password"})
    admin_email = serializers.EmailField(required=False, default="")
    settings = CreationSettingsSerializer(required=False)

    def validate_admin_username(self, value):
        try:
            get_user_model().username_validator(value)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(f"Admin user name {value!r} is invalid: {exc.messages[0]}") from None
        return value

    def validate(self, attrs):
        user = get_user_model()(username=attrs["admin_username"], email=attrs.get("admin_email", ""))
        try:
            validate_password(attrs["admin_password"], user=user)
        except DjangoValidationError as exc:
            raise serializers.ValidationError({"admin_password": exc.messages}) from None
        return attrs


class ProvisioningJobSerializer(serializers.ModelSerializer):
    """State of a provisioning request; poll it until ``status`` is succeeded or failed."""

    progress = serializers.IntegerField(read_only=True, help_text="Percent complete, from the step reached.")
    step_label = serializers.SerializerMethodField()
    tenant = serializers.SlugRelatedField(slug_field="schema_name", read_only=True)

    class Meta:
        model = ProvisioningJob
        fields = (
            "id", "schema_name", "name", "domain", "admin_username", "status", "step", "step_label", "progress",
            "error", "tenant", "requested_by", "requested_at", "started_at", "finished_at",
        )
        read_only_fields = fields

    def get_step_label(self, job) -> str:
        return ProvisioningStep(job.step).label


class SuspendSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    reason = serializers.CharField(max_length=500, help_text="Why the tenant is suspended; shown in its audit trail.")


class TenantExportSerializer(serializers.ModelSerializer):
    """State of a tenant export; poll it until ``status`` is done or failed."""

    class Meta:
        model = TenantExport
        fields = (
            "id", "schema_name", "tenant_name", "status", "progress_percent", "current_table", "rows_written",
            "file_size", "checksum", "error", "requested_by", "created_at", "started_at", "finished_at",
        )
        read_only_fields = fields


class DeleteSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    confirm = serializers.CharField(max_length=63, help_text="The tenant's schema name, typed again to confirm.")
    skip_export = serializers.BooleanField(
        default=False,
        help_text="Delete even though no completed export covers the current data; the data is then lost.",
    )


class LifecycleEventSerializer(serializers.ModelSerializer):
    """A lifecycle event kept in the public schema, such as a deletion."""

    class Meta:
        model = TenantLifecycleEvent
        fields = ("id", "time", "schema_name", "tenant_name", "event", "actor", "detail")
        read_only_fields = fields
