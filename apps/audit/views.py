"""REST API of the audit trail: the entry list, the export and the export's manifest."""

import re

from django.core.handlers.asgi import ASGIRequest
from django.db import connection, transaction
from django.http import QueryDict, StreamingHttpResponse
from django.urls import reverse
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from .choices import AuditAction
from .exports import ExportFormat, aiter_export, build_manifest, iter_export
from .filters import AuditEntryFilter, filtered_entries, reject_unknown_parameters
from .models import AuditEntry
from .permissions import CanReadAuditTrail
from .serializers import AuditEntrySerializer
from .services import record

EXPORT_PARAMETERS = ("format", "through")

FORMAT_PARAMETER = OpenApiParameter(
    "format", OpenApiTypes.STR, enum=list(ExportFormat.ALL), required=True, description="File format of the export."
)
THROUGH_PARAMETER = OpenApiParameter(
    "through", OpenApiTypes.INT,
    description="Last entry sequence to include; the export's X-Audit-Through header. Default: the chain head.",
)


class AuditEntryPagination(CursorPagination):
    """Pages newest first by sequence, so a deep page costs no more than the first.

    An invalid page size or cursor is a 400 naming the parameter, as in the other list endpoints
    (apps.api.pagination), instead of DRF's silent default size and 404.
    """

    ordering = "-sequence"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isdigit() or int(raw) < 1:
            raise ValidationError({self.page_size_query_param: [
                f"{raw[:32]!r} is not a page size; give a whole number from 1 to {self.max_page_size}."
            ]})
        return min(int(raw), self.max_page_size)

    def decode_cursor(self, request):
        raw = request.query_params.get(self.cursor_query_param)
        try:
            # DRF's base64 decoding skips characters outside the alphabet, so "%00" would decode to the first page.
            if raw is not None and not re.fullmatch(r"[A-Za-z0-9+/=]+", raw):
                raise NotFound()
            return super().decode_cursor(request)
        except NotFound:
            raise ValidationError({self.cursor_query_param: [
                "Invalid cursor; use the next or previous link of an earlier page."
            ]}) from None


class AuditEntryListView(ListAPIView):
    """List audit entries, newest first, filtered by time range, actor, action, object and outcome."""

    serializer_class = AuditEntrySerializer
    permission_classes = (IsAuthenticated, CanReadAuditTrail)
    pagination_class = AuditEntryPagination
    filter_backends = (DjangoFilterBackend,)
    filterset_class = AuditEntryFilter

    def get_queryset(self):
        reject_unknown_parameters(self.request, ("cursor", "page_size"))
        return AuditEntry.objects.all()


class ExportParametersMixin:
    permission_classes = (IsAuthenticated, CanReadAuditTrail)
    # Filtering happens in filtered_entries; these three only document the filters in the API schema.
    queryset = AuditEntry.objects.none()
    filter_backends = (DjangoFilterBackend,)
    filterset_class = AuditEntryFilter

    def perform_content_negotiation(self, request, force=False):
        # Here `format` names the export file format, which DRF would take for a renderer.
        # Errors are always rendered as JSON.
        renderer = JSONRenderer()
        return renderer, renderer.media_type

    def export_format(self, request):
        value = request.query_params.get("format", "")
        if value not in ExportFormat.ALL:
            raise ValidationError({"format": [f"{value!r} is not an export format; use csv or json."]})
        return value

    def through(self, request, head):
        raw = request.query_params.get("through", "")
        if raw == "":
            return None
        if not raw.isdigit():
            raise ValidationError({"through": [f"{raw!r} is not an entry sequence; give a whole number such as 120."]})
        if int(raw) > head:
            raise ValidationError({"through": [f"Entry {raw} does not exist; the chain ends at entry {head}."]})
        return int(raw)


def head_sequence():
    return AuditEntry.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0


def export_query(export_format, filters, through):
    query = QueryDict(mutable=True)
    query["format"] = export_format
    for name, values in filters.items():
        query.setlist(name, values)
    query["through"] = str(through)
    return query.urlencode()


class AuditExportView(ExportParametersMixin, APIView):
    """Stream the filtered audit trail as a CSV or JSON file, in chain order, and audit the export itself."""

    @extend_schema(
        parameters=[FORMAT_PARAMETER, THROUGH_PARAMETER],
        filters=True,
        responses={(200, "text/csv"): OpenApiTypes.BINARY, (200, "application/json"): OpenApiTypes.BINARY},
    )
    def get(self, request):
        export_format = self.export_format(request)
        queryset, filters = filtered_entries(request, extra_parameters=EXPORT_PARAMETERS)
        schema = connection.schema_name

        # The export ends at the current head, so it never includes its own entry and stays reproducible.
        with transaction.atomic():
            head = head_sequence()
            through = self.through(request, head)
            through = head if through is None else through
            record(
                AuditAction.AUDIT_EXPORTED, actor=request.user, request=request,
                detail={"format": export_format, "filters": filters, "through": through},
            )

        queryset = queryset.filter(sequence__lte=through)
        if isinstance(request._request, ASGIRequest):
            content = aiter_export(schema, queryset, export_format)
        else:
            content = iter_export(schema, queryset, export_format)
        response = StreamingHttpResponse(content, content_type=ExportFormat.CONTENT_TYPES[export_format])
        response["Content-Disposition"] = f'attachment; filename="audit-{schema}-through-{through}.{export_format}"'
        response["X-Audit-Through"] = str(through)
        manifest_url = f"{reverse('audit-export-manifest')}?{export_query(export_format, filters, through)}"
        response["Link"] = f'<{manifest_url}>; rel="describedby"'
        return response


class AuditExportManifestView(ExportParametersMixin, APIView):
    """Return the manifest of an export: its SHA-256, entry count and the chain hashes at its ends."""

    @extend_schema(
        parameters=[FORMAT_PARAMETER, THROUGH_PARAMETER], filters=True, responses={200: OpenApiTypes.OBJECT}
    )
    def get(self, request):
        export_format = self.export_format(request)
        queryset, filters = filtered_entries(request, extra_parameters=EXPORT_PARAMETERS)
        through = self.through(request, head_sequence())
        if through is None:
            raise ValidationError(
                {"through": ["Missing; give the X-Audit-Through value of the export this manifest is for."]}
            )

        schema = connection.schema_name
        manifest = build_manifest(
            schema, queryset.filter(sequence__lte=through), export_format, filters=filters, through=through,
            chain_head=AuditEntry.objects.filter(sequence=through).first(),
        )
        response = Response(manifest)
        filename = f"audit-{schema}-through-{through}.{export_format}.manifest.json"
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response
