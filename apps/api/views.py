from dataclasses import asdict
from datetime import timedelta

from django.http import HttpResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from apps.accounts.roles import Capability
from apps.audit.mixins import AuditedModelViewSetMixin
from apps.audit.services import record_data_read
from apps.protocols.diagnostics import BrowseError, InvalidBrowseRequest, check_connection
from apps.protocols.diagnostics import browse as browse_device
from apps.protocols.models import Device, Point
from apps.protocols.profiles import ProfileError, apply_profile, export_profile, parse_profile
from apps.protocols.services import InvalidSetpoint, SetpointError, write_setpoint
from apps.sensors.models import Sensor
from apps.telemetry.models import Reading
from apps.units.models import Site, Unit

from .pagination import ReadingCursorPagination
from .serializers import (
    DeviceProfileImportSerializer,
    DeviceSerializer,
    PointSerializer,
    ReadingSerializer,
    SensorSerializer,
    SetpointSerializer,
    SiteSerializer,
    UnitSerializer,
)

DEFAULT_READING_WINDOW = timedelta(hours=1)


class SiteViewSet(AuditedModelViewSetMixin, viewsets.ModelViewSet):
    queryset = Site.objects.all()
    serializer_class = SiteSerializer


class UnitViewSet(AuditedModelViewSetMixin, viewsets.ModelViewSet):
    queryset = Unit.objects.select_related("site")
    serializer_class = UnitSerializer


class DeviceViewSet(AuditedModelViewSetMixin, viewsets.ModelViewSet):
    queryset = Device.objects.all()
    serializer_class = DeviceSerializer
    action_capabilities = {
        "profile": Capability.CONFIGURE_PLANT,
        "test": Capability.CONFIGURE_PLANT,
        "browse": Capability.CONFIGURE_PLANT,
    }

    @extend_schema(request=DeviceProfileImportSerializer, responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get", "post"], serializer_class=DeviceProfileImportSerializer)
    def profile(self, request, pk=None):
        """GET: the device's points as a YAML profile. POST: create or update its points from a profile."""
        device = self.get_object()
        if request.method == "GET":
            return HttpResponse(export_profile(device), content_type="application/yaml; charset=utf-8")
        serializer = DeviceProfileImportSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            profile = parse_profile(serializer.validated_data["profile"])
            result = apply_profile(profile, device=device, unit=serializer.validated_data["unit"], actor=request.user)
        except ProfileError as exc:
            issues = [{"line": issue.line, "field": issue.field, "message": issue.message} for issue in exc.issues]
            return Response({"profile": issues}, status=status.HTTP_400_BAD_REQUEST)
        return Response({"profile": profile.name, **result.__dict__})


    @extend_schema(request=None, responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"], serializer_class=None)
    def test(self, request, pk=None):
        """Connect to the device, read its first point where the protocol allows, close, and report the outcome."""
        return Response(asdict(check_connection(self.get_object())))

    @extend_schema(
        parameters=[
            OpenApiParameter("node", OpenApiTypes.STR, description="OPC UA node id to list; default the Objects folder."),
            OpenApiParameter("topic", OpenApiTypes.STR, description="MQTT topic filter to listen to; default '#'."),
            OpenApiParameter("seconds", OpenApiTypes.FLOAT, description="MQTT listening time in seconds; default 3."),
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    @action(detail=True, methods=["get"], serializer_class=None)
    def browse(self, request, pk=None):
        """List an OPC UA node's children, or the MQTT topics seen on the broker within a few seconds."""
        device = self.get_object()
        raw_seconds = request.query_params.get("seconds") or "3"
        try:
            seconds = float(raw_seconds)
        except ValueError:
            raise ValidationError({"seconds": f"{raw_seconds[:32]!r} is not a number of seconds, e.g. 3."}) from None
        try:
            found = browse_device(
                device, node_id=request.query_params.get("node", ""),
                topic_filter=request.query_params.get("topic") or "#", seconds=seconds,
            )
        except InvalidBrowseRequest as exc:
            raise ValidationError({"detail": [str(exc)]}) from exc
        except BrowseError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_502_BAD_GATEWAY)
        return Response({"results": [asdict(entry) for entry in found]})


class PointViewSet(AuditedModelViewSetMixin, viewsets.ModelViewSet):
    queryset = Point.objects.all()
    serializer_class = PointSerializer
    action_capabilities = {"write": Capability.WRITE_SETPOINT}

    @extend_schema(request=SetpointSerializer, responses=SetpointSerializer)
    @action(detail=True, methods=["post"], serializer_class=SetpointSerializer)
    def write(self, request, pk=None):
        """Write a setpoint to the point's device and return the value the device read back."""
        point = self.get_object()
        serializer = SetpointSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            result = write_setpoint(point, serializer.validated_data["value"], actor=request.user)
        except InvalidSetpoint as exc:
            raise ValidationError({"value": [str(exc)]}) from exc
        except SetpointError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_502_BAD_GATEWAY)
        return Response(SetpointSerializer(result).data)


def parse_time_parameter(request, name, default):
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    shown = raw if len(raw) <= 64 else raw[:64] + "…"
    try:
        # A "+" in an unencoded query string arrives as a space.
        parsed = parse_datetime(raw.replace(" ", "+"))
    except ValueError:
        parsed = None
    if parsed is None:
        raise ValidationError({name: f"{shown!r} is not a valid ISO 8601 timestamp; use e.g. 2026-01-05T10:00:00Z."})
    if timezone.is_naive(parsed):
        raise ValidationError({name: f"{shown!r} has no UTC offset; append Z or an offset such as +01:00."})
    return parsed


class SensorViewSet(AuditedModelViewSetMixin, viewsets.ModelViewSet):
    queryset = Sensor.objects.select_related("unit")
    serializer_class = SensorSerializer
    # Query parameters besides pagination, by action; the paginator rejects any other (apps.api.pagination).
    query_parameters = {"readings": ("start", "end")}

    @extend_schema(
        parameters=[
            OpenApiParameter("start", OpenApiTypes.DATETIME, description="Inclusive start (ISO 8601 with offset); default one hour before end."),
            OpenApiParameter("end", OpenApiTypes.DATETIME, description="Exclusive end (ISO 8601 with offset); default now."),
        ],
        responses=ReadingSerializer(many=True),
    )
    @action(detail=True, methods=["get"], pagination_class=ReadingCursorPagination, serializer_class=ReadingSerializer)
    def readings(self, request, pk=None):
        """List the sensor's readings in [start, end) in time order."""
        sensor = self.get_object()
        end = parse_time_parameter(request, "end", timezone.now())
        try:
            default_start = end - DEFAULT_READING_WINDOW
        except OverflowError:
            raise ValidationError({"end": f"end {end.isoformat()} is too early; give a start as well."}) from None
        start = parse_time_parameter(request, "start", default_start)
        if start >= end:
            raise ValidationError({"start": f"start {start.isoformat()} must be before end {end.isoformat()}."})
        readings = Reading.objects.filter(sensor_id=sensor.id, time__gte=start, time__lt=end).values(
            "time", "value", "quality"
        )
        page = self.paginate_queryset(readings)
        # Each page of raw process data leaves the system, so every history read is recorded as an export.
        record_data_read(request, sensor, start=start, end=end, rows=len(page))
        return self.get_paginated_response(ReadingSerializer(page, many=True).data)
