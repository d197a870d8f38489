"""CSV import endpoints: API clients upload historical readings as a CSV file into the one ingest pipeline.

``POST /api/v1/ingest/csv/`` imports inside the request and takes uploads
up to TELEMETRY_CSV_IMPORT_MAX_SYNC_BYTES. ``/api/v1/ingest/csv/jobs/``
queues an import of any size as a background job that the client polls.
"""

import codecs
import logging
import tempfile
from typing import ClassVar

from django.conf import settings
from django.db import connection
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import BaseParser, MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.telemetry.csv_import import MAX_LISTED_REJECTIONS, CsvImportError, import_readings
from apps.telemetry.csv_import_jobs import COPY_CHUNK_BYTES, fail_interrupted_jobs, jobs_of, start_import_job
from apps.telemetry.models import CsvImportJob

from .ingest import CanAddReadings

logger = logging.getLogger(__name__)

UPLOAD_FIELD = "file"
BODY_SOURCE = "request body"
# Bytes a multipart body may exceed the upload limit by: its boundaries and part headers.
MULTIPART_FRAMING_BYTES = 64 * 1024
JOBS_PATH = "/api/v1/ingest/csv/jobs/"


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


class CsvUploadParser(BaseParser):
    """Parser of a text/csv request body that hands on the raw byte stream, to be stored as it is."""

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream


class UploadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "upload_too_large"

    def __init__(self, size, limit, *, at_least=False, subject="The CSV upload"):
        amount = f"more than {limit:,}" if at_least else f"{size:,}"
        super().__init__(
            f"{subject} is {amount} bytes, over the {limit:,}-byte limit of this endpoint "
            f"(THERMACORE_CSV_IMPORT_MAX_SYNC_BYTES). Send it to POST {JOBS_PATH} instead, which imports it "
            "in the background and returns a job to poll."
        )


def _declared_length(request):
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _buffered_within(stream, limit):
    """Copy ``stream`` into a temporary file, raising UploadTooLarge as soon as it passes ``limit`` bytes."""
    buffer = tempfile.SpooledTemporaryFile(max_size=COPY_CHUNK_BYTES)
    size = 0
    while chunk := stream.read(COPY_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            buffer.close()
            raise UploadTooLarge(size, limit, at_least=True)
        buffer.write(chunk)
    buffer.seek(0)
    return buffer


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
        responses={
            200: CsvImportResponseSerializer,
            413: OpenApiResponse(
                description="The upload is larger than THERMACORE_CSV_IMPORT_MAX_SYNC_BYTES; send it to "
                f"POST {JOBS_PATH}."
            ),
        },
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
        # The import runs inside the request, so uploads over the limit are sent to the jobs endpoint instead.
        # NOTE: under ASGI Django receives the whole body before this view runs. The limit bounds the
        # import's time but not the upload, so limit body sizes at the proxy as well.
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
        limit = settings.TELEMETRY_CSV_IMPORT_MAX_SYNC_BYTES
        declared = _declared_length(request)
        is_body = request.content_type.split(";")[0].strip() == CsvBodyParser.media_type
        if declared is not None and declared > limit and is_body:
            raise UploadTooLarge(declared, limit)
        # A multipart body adds boundaries and headers to the file, whose own size is checked once parsed.
        if declared is not None and declared > limit + MULTIPART_FRAMING_BYTES:
            raise UploadTooLarge(declared, limit + MULTIPART_FRAMING_BYTES, subject="The multipart request")
        if is_body:
            if declared is None:
                # A body without Content-Length (chunked) is counted before anything is stored.
                return codecs.getreader("utf-8-sig")(_buffered_within(request._request, limit)), BODY_SOURCE
            return request.data, BODY_SOURCE
        upload = _upload(request)
        if upload.size > limit:
            raise UploadTooLarge(upload.size, limit)
        return codecs.getreader("utf-8-sig")(upload), upload.name


class LengthRequired(APIException):
    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_code = "length_required"
    default_detail = (
        "A multipart upload needs a Content-Length header, which Django's multipart parser reads. Send it with "
        "Content-Length, or send the file as a text/csv body, which may be chunked."
    )


def _upload(request):
    if request.content_type.startswith("multipart/") and _declared_length(request) is None:
        raise LengthRequired()
    upload = request.FILES.get(UPLOAD_FIELD)
    if upload is None:
        raise ValidationError(
            {UPLOAD_FIELD: ["No CSV file sent; post it as the multipart field 'file' or as a text/csv body."]}
        )
    return upload


class CsvImportJobSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField(help_text="URL of this job, to poll until it has finished.")
    requested_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True,
        help_text="User name of the requester; null once that user is deleted.",
    )
    lines_read = serializers.IntegerField(
        source="lines", read_only=True, help_text="Data lines read so far, without the header: the progress."
    )
    report = serializers.SerializerMethodField(
        help_text="The counts so far, and the final ones once the job has finished, as the synchronous import "
        "returns them."
    )

    class Meta:
        model = CsvImportJob
        fields = (
            "id", "url", "status", "source", "upload_size", "dry_run", "requested_by", "created_at", "started_at",
            "finished_at", "lines_read", "report",
        )
        read_only_fields = fields

    def get_url(self, job) -> str:
        path = reverse("ingest_csv_job", args=[job.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path

    @extend_schema_field(CsvImportResponseSerializer)
    def get_report(self, job):
        return job.report()


DRY_RUN_PARAMETER = OpenApiParameter(
    "dry_run", OpenApiTypes.BOOL, required=False,
    description="Check every line against the sensors and stored history, but store nothing. Default: false. "
    "A multipart request may send it as a form field instead.",
)


class CsvImportJobListView(GenericAPIView):
    """Queue CSV imports of any size as background jobs, and list the caller's own jobs, newest first."""

    permission_classes: ClassVar = [IsAuthenticated, CanAddReadings]
    parser_classes: ClassVar = [MultiPartParser, CsvUploadParser]
    serializer_class = CsvImportJobSerializer
    # Names the model for the schema and tests; get_queryset narrows it to the caller's jobs.
    queryset = CsvImportJob.objects.none()

    def get_queryset(self):
        return jobs_of(self.request.user)

    @extend_schema(responses=CsvImportJobSerializer(many=True))
    def get(self, request):
        """List the CSV import jobs the caller requested, which are the only ones they see, also as Admin."""
        queryset = self.get_queryset()
        fail_interrupted_jobs(queryset)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(
        parameters=[
            DRY_RUN_PARAMETER,
            OpenApiParameter("Location", OpenApiTypes.URI, OpenApiParameter.HEADER, response=[202],
                             description="URL of the job to poll."),
        ],
        request={
            "text/csv": {"type": "string"},
            "multipart/form-data": {
                "type": "object",
                "properties": {
                    UPLOAD_FIELD: {"type": "string", "format": "binary"},
                    "dry_run": {"type": "boolean"},
                },
            },
        },
        responses={
            202: OpenApiResponse(CsvImportJobSerializer, description="The job, pending."),
        },
    )
    def post(self, request):
        """Store the CSV file and queue its import; return 202 with the job and its URL in Location.

        The file is sent as the body (text/csv) or as the multipart field
        ``file``, in the format of ``POST /api/v1/ingest/csv/``, and has no
        size limit here. Poll the job until its status is succeeded or failed.
        """
        dry_run = self._dry_run(request)
        if request.content_type.split(";")[0].strip() == CsvUploadParser.media_type:
            # A body without Content-Length reaches DRF as no stream, so the Django request is read instead.
            stream = request._request
            chunks, source = iter(lambda: stream.read(COPY_CHUNK_BYTES), b""), BODY_SOURCE
        else:
            upload = _upload(request)
            chunks, source = upload.chunks(COPY_CHUNK_BYTES), upload.name
        job = start_import_job(actor=request.user, chunks=chunks, source=source, dry_run=dry_run, request=request)
        data = self.get_serializer(job).data
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["url"]})

    def _dry_run(self, request):
        raw = request.query_params.get("dry_run")
        if raw is None and request.content_type.startswith("multipart/"):
            raw = request.data.get("dry_run")
        if raw is None:
            return False
        try:
            return serializers.BooleanField().to_internal_value(raw)
        except ValidationError:
            raise ValidationError({"dry_run": [f"{raw!r} is not a boolean; send true or false."]}) from None


class CsvImportJobDetailView(GenericAPIView):
    """Return one of the caller's CSV import jobs: its status, progress and report."""

    permission_classes: ClassVar = [IsAuthenticated, CanAddReadings]
    serializer_class = CsvImportJobSerializer
    queryset = CsvImportJob.objects.none()

    def get_queryset(self):
        return jobs_of(self.request.user)

    def get(self, request, pk):
        """Return the job. Another user's job, or a job of another tenant, is 404."""
        job = get_object_or_404(self.get_queryset(), pk=pk)
        if fail_interrupted_jobs(self.get_queryset().filter(pk=job.pk)):
            job.refresh_from_db()
        return Response(self.get_serializer(job).data)
