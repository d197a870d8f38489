"""CSV import endpoint: API clients upload historical readings as a CSV file into the one ingest pipeline."""

import codecs
import logging
from typing import ClassVar

from django.db import connection
from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import BaseParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.telemetry.csv_import import MAX_LISTED_REJECTIONS, CsvImportError, import_readings

from .ingest import CanAddReadings

logger = logging.getLogger(__name__)

UPLOAD_FIELD = "file"


class CsvBodyParser(BaseParser):
    """Parser of a text/csv request body into a stream of text lines, read as the import goes."""

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None):
        if stream is None:
            return []
        return codecs.getreader("utf-8-sig")(stream)


CsvImportResponseSerializer = inline_serializer(
    "CsvImportResponse",
    {
        "layout": serializers.CharField(help_text="'long' (time,sensor,value) or 'wide' (time,<sensor id>,...)."),
        "lines": serializers.IntegerField(help_text="Data lines read, without the header and empty lines."),
        "chunks": serializers.IntegerField(help_text="Batches handed to ingest."),
        "accepted": serializers.IntegerField(help_text="Readings stored now."),
        "spooled": serializers.IntegerField(
            help_text="Readings accepted while the database was unavailable; they are stored once it is back."
        ),
        "duplicates": serializers.IntegerField(help_text="Readings whose sensor and time were already stored."),
        "rejected": serializers.IntegerField(help_text="Readings not stored; see rejections."),
        "rejections": inline_serializer(
            "CsvImportRejection",
            {
                "line": serializers.IntegerField(help_text="Line number in the file; the header is line 1."),
                "sensor": serializers.JSONField(),
                "reason": serializers.CharField(),
            },
            many=True,
        ),
        "unlisted_rejections": serializers.IntegerField(
            help_text=f"Rejected readings beyond the first {MAX_LISTED_REJECTIONS}, counted but not listed."
        ),
        "error": serializers.CharField(
            help_text="Why reading stopped early at an unreadable line; the lines before it are stored."
        ),
        "dry_run": serializers.BooleanField(),
    },
)


class CsvImportView(APIView):
    """Import historical readings from CSV; importing the same sensor and time again adds nothing."""

    permission_classes: ClassVar = [IsAuthenticated, CanAddReadings]
    parser_classes: ClassVar = [MultiPartParser, CsvBodyParser]

    @extend_schema(
        request={
            "text/csv": {"type": "string"},
            "multipart/form-data": {
                "type": "object",
                "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary"}},
            },
        },
        responses=CsvImportResponseSerializer,
        examples=[
            OpenApiExample(
                "Local times of the sensor's site",
                request_only=True,
                media_type="text/csv",
                value="time,sensor,value\n2026-01-05T10:00:00,12,21.5\n2026-01-05T10:00:10+01:00,12,21.7\n",
            ),
        ],
    )
    def post(self, request):
        """Store the readings of a CSV file sent as the body (text/csv) or as the multipart field ``file``.

        Columns: ``time,sensor,value`` with optional ``quality`` and ``fold``,
        or ``time,<sensor id>,<sensor id>,...``. A time without a UTC offset is
        a local time of the sensor's site. Each rejected reading is named with
        its line number and reason; the readings of the other lines are stored.
        """
        # NOTE: The import runs inside the request with no size limit, so very large files belong to the command.
        text, source = self._csv_text(request)
        try:
            report = import_readings(
                connection.schema_name,
                text,
                actor=request.user,
                source=source,
                request=request,
            )
        except CsvImportError as exc:
            raise ValidationError({UPLOAD_FIELD: [str(exc)]}) from None
        logger.info(
            "CSV import of %r into schema %s by user %s: %d accepted, %d spooled, %d duplicates, %d rejected",
            source,
            connection.schema_name,
            request.user.pk,
            report.accepted,
            report.spooled,
            report.duplicates,
            report.rejected,
        )
        return Response(report.as_dict())

    def _csv_text(self, request):
        if request.content_type.split(";")[0].strip() == CsvBodyParser.media_type:
            return request.data, "request body"
        upload = request.FILES.get(UPLOAD_FIELD)
        if upload is None:
            raise ValidationError(
                {UPLOAD_FIELD: ["No CSV file sent; post it as the multipart field 'file' or as a text/csv body."]}
            )
        return codecs.getreader("utf-8-sig")(upload), upload.name
