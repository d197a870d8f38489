"""REST API of the platform operator on the public domain: provision, change, suspend, resume, export, delete tenants.

Only the public schema's URLs (thermacore.urls_public) route here, so every
tenant domain returns 404 for these paths. Users are the public schema's
staff users, authenticated by their session of the platform admin or by a
bearer token whose tenant claim is the public schema, issued by the
endpoints of apps.tenants.platform_tokens. A tenant's token names its own
schema and gets 401 here.
"""

import logging

from django.db import connection
from django_tenants.utils import get_public_schema_name
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.reverse import reverse

from apps.accounts.authentication import TenantJWTAuthentication

from .backup_models import TenantExport
from .jobs import ProvisioningConflict, request_export, request_provisioning
from .models import ProvisioningJob, Tenant
from .platform_tokens import PLATFORM_TAG, is_platform_staff
from .serializers import (
    DeleteSerializer,
    LifecycleEventSerializer,
    ProvisioningJobSerializer,
    SuspendSerializer,
    TenantCreateSerializer,
    TenantExportSerializer,
    TenantSerializer,
    TenantSettingsSerializer,
)
from .services import resume_tenant, suspend_tenant, update_tenant_settings

logger = logging.getLogger(__name__)


class IsPlatformStaff(BasePermission):
    """Allow active staff users of the public schema, as the platform admin site does."""

    message = "Only platform staff may use the platform API; log in to the platform admin with a staff account."

    def has_permission(self, request, view):
        if connection.schema_name != get_public_schema_name():
            return False
        return is_platform_staff(request.user)


class PlatformAPIMixin:
    authentication_classes = (TenantJWTAuthentication, SessionAuthentication)
    permission_classes = (IsPlatformStaff,)


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The tenant is not in a state that allows this action."
    default_code = "conflict"


@extend_schema(tags=[PLATFORM_TAG])
@extend_schema_view(
    list=extend_schema(summary="List tenants"),
    retrieve=extend_schema(summary="Show a tenant"),
    partial_update=extend_schema(
        summary="Change a tenant's quotas, security policy or settings",
        request=TenantSettingsSerializer, responses=TenantSerializer,
    ),
    create=extend_schema(
        summary="Request a new tenant with its first admin",
        request=TenantCreateSerializer,
        responses={202: ProvisioningJobSerializer, 409: OpenApiResponse(description="Schema name or domain taken")},
    ),
)
class TenantViewSet(
    PlatformAPIMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet,
):
    """Tenants of the platform, by schema name; the public schema itself is not listed."""

    serializer_class = TenantSerializer
    lookup_field = "schema_name"
    lookup_value_regex = "[a-z][a-z0-9_]{0,62}"
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self):
        return Tenant.objects.exclude(schema_name=get_public_schema_name()).prefetch_related("domains")

    def create(self, request):
        serializer = TenantCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            job = request_provisioning(
                actor=request.user, schema_name=data["schema_name"], name=data["name"], domain=data["domain"],
                admin_username=data["admin_username"], admin_password=data["admin_password"],
                admin_email=data["admin_email"], time_zone=data["time_zone"],
                tenant_settings=data.get("settings") or {},
            )
        except ProvisioningConflict as exc:
            raise Conflict(str(exc)) from None
        location = reverse("platform-provisioning-job-detail", kwargs={"pk": job.pk}, request=request)
        return Response(ProvisioningJobSerializer(job).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": location})

    def partial_update(self, request, schema_name=None):
        tenant = self.get_object()
        serializer = TenantSettingsSerializer(tenant, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        if not serializer.validated_data:
            raise ValidationError(
                f"The request changes nothing; send one or more of {', '.join(TenantSettingsSerializer.Meta.fields)}."
            )
        update_tenant_settings(tenant, serializer.validated_data, actor=request.user)
        return Response(TenantSerializer(Tenant.objects.get(pk=tenant.pk)).data)

    @extend_schema(summary="Suspend a tenant", request=SuspendSerializer,
                   responses={200: TenantSerializer, 409: OpenApiResponse(description="Tenant is not active")})
    @action(detail=True, methods=["post"])
    def suspend(self, request, schema_name=None):
        tenant = self.get_object()
        serializer = SuspendSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            changed = suspend_tenant(tenant, actor=request.user, reason=serializer.validated_data["reason"])
        except ValueError as exc:
            raise ValidationError({"reason": [str(exc)]}) from None
        if not changed:
            raise Conflict(
                f"Tenant {tenant.schema_name!r} is {tenant.status}, not active, so it cannot be suspended."
            )
        return Response(TenantSerializer(tenant).data)

    @extend_schema(summary="Resume a suspended tenant", request=None,
                   responses={200: TenantSerializer, 409: OpenApiResponse(description="Tenant is not suspended")})
    @action(detail=True, methods=["post"])
    def resume(self, request, schema_name=None):
        tenant = self.get_object()
        if not resume_tenant(tenant, actor=request.user):
            raise Conflict(f"Tenant {tenant.schema_name!r} is {tenant.status}, not suspended, so it cannot be resumed.")
        return Response(TenantSerializer(tenant).data)

    @extend_schema(summary="Export a tenant to an archive file", request=None,
                   responses={202: TenantExportSerializer, 409: OpenApiResponse(description="Tenant is provisioning")})
    @action(detail=True, methods=["post"])
    def export(self, request, schema_name=None):
        tenant = self.get_object()
        try:
            export = request_export(tenant, actor=request.user)
        except ProvisioningConflict as exc:
            raise Conflict(str(exc)) from None
        location = reverse("platform-tenant-export-detail", kwargs={"pk": export.pk}, request=request)
        return Response(TenantExportSerializer(export).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": location})

    @extend_schema(
        summary="Delete a tenant and drop its schema",
        description="Rejected (409) unless a completed export covers the current data or skip_export is true.",
        request=DeleteSerializer,
        responses={200: LifecycleEventSerializer, 409: OpenApiResponse(description="Deletion rejected, with the reason")},
    )
    # Not named "delete", because a viewset method of that name would handle HTTP DELETE.
    @action(detail=True, methods=["post"], url_path="delete", url_name="delete")
    def remove(self, request, schema_name=None):
        from .backup import DeletionRejected, delete_tenant

        tenant = self.get_object()
        serializer = DeleteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            event = delete_tenant(
                tenant, actor=request.user, confirm=serializer.validated_data["confirm"],
                skip_export=serializer.validated_data["skip_export"],
            )
        except DeletionRejected as exc:
            raise Conflict(str(exc)) from None
        return Response(LifecycleEventSerializer(event).data)


@extend_schema(tags=[PLATFORM_TAG])
@extend_schema_view(
    list=extend_schema(summary="List tenant exports, newest first"),
    retrieve=extend_schema(summary="Show the progress of a tenant export"),
)
class TenantExportViewSet(PlatformAPIMixin, viewsets.ReadOnlyModelViewSet):
    """Tenant exports; the Location of a 202 from a tenant's export action points here."""

    serializer_class = TenantExportSerializer
    queryset = TenantExport.objects.all()


@extend_schema(tags=[PLATFORM_TAG])
@extend_schema_view(
    list=extend_schema(summary="List provisioning requests, newest first"),
    retrieve=extend_schema(summary="Show the progress of a provisioning request"),
)
class ProvisioningJobViewSet(PlatformAPIMixin, viewsets.ReadOnlyModelViewSet):
    """Provisioning requests; the Location of a 202 from tenant creation points here."""

    serializer_class = ProvisioningJobSerializer
    queryset = ProvisioningJob.objects.select_related("tenant")
