from datetime import timedelta

from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError

from apps.protocols.models import Device, Point
from apps.sensors.models import Sensor
from apps.telemetry.models import Reading
from apps.units.models import Site, Unit

from .pagination import ReadingCursorPagination
from .serializers import (
    DeviceSerializer,
    PointSerializer,
    ReadingSerializer,
    SensorSerializer,
    SiteSerializer,
    UnitSerializer,
)

DEFAULT_READING_WINDOW = timedelta(hours=1)


class SiteViewSet(viewsets.ModelViewSet):
    queryset = Site.objects.all()
    serializer_class = SiteSerializer


class UnitViewSet(viewsets.ModelViewSet):
    queryset = Unit.objects.select_related("site")
    serializer_class = UnitSerializer


class DeviceViewSet(viewsets.ModelViewSet):
    queryset = Device.objects.all()
    serializer_class = DeviceSerializer


class PointViewSet(viewsets.ModelViewSet):
    queryset = Point.objects.all()
    serializer_class = PointSerializer


def parse_time_parameter(request, name, default):
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    parsed = parse_datetime(raw.replace(" ", "+"))
    if parsed is None:
        raise ValidationError({name: f"{raw!r} is not an ISO 8601 timestamp; use e.g. 2026-01-05T10:00:00Z."})
    if timezone.is_naive(parsed):
        raise ValidationError({name: f"{raw!r} has no UTC offset; append Z or an offset such as +01:00."})
    return parsed


class SensorViewSet(viewsets.ModelViewSet):
    queryset = Sensor.objects.select_related("unit")
    serializer_class = SensorSerializer

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
        start = parse_time_parameter(request, "start", end - DEFAULT_READING_WINDOW)
        if start >= end:
            raise ValidationError({"start": f"start {start.isoformat()} must be before end {end.isoformat()}."})
        readings = Reading.objects.filter(sensor_id=sensor.id, time__gte=start, time__lt=end).values(
            "time", "value", "quality"
        )
        page = self.paginate_queryset(readings)
        return self.get_paginated_response(ReadingSerializer(page, many=True).data)
