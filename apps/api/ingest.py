"""HTTP ingest endpoint: API clients post batches of readings into the one ingest pipeline."""

import logging

from django.db import connection
from drf_spectacular.utils import OpenApiExample, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.telemetry.batches import parse_readings
from apps.telemetry.ingest import ingest

logger = logging.getLogger(__name__)

MAX_READINGS = 10_000


class CanAddReadings(BasePermission):
    message = "You may not add readings; ask an administrator for the permission to add readings."

    def has_permission(self, request, view):
        return request.user.has_perm("telemetry.add_reading")


IngestResponseSerializer = inline_serializer(
    "IngestResponse",
    {
        "accepted": serializers.IntegerField(help_text="Readings stored now."),
        "spooled": serializers.IntegerField(
            help_text="Readings accepted while the database was unavailable; they are stored once it is back."
        ),
        "duplicates": serializers.IntegerField(help_text="Readings whose sensor and time were already stored."),
        "rejected": serializers.IntegerField(help_text="Readings not stored; see rejections."),
        "rejections": inline_serializer(
            "IngestRejection",
            {
                "index": serializers.IntegerField(help_text="Position of the reading in the request's readings."),
                "sensor": serializers.JSONField(),
                "reason": serializers.CharField(),
            },
            many=True,
        ),
    },
)


class IngestView(APIView):
    """Store a batch of readings; storing the same sensor and time again adds nothing."""

    permission_classes = [IsAuthenticated, CanAddReadings]

    @extend_schema(
        request=inline_serializer("IngestRequest", {"readings": serializers.ListField(child=serializers.JSONField())}),
        responses=IngestResponseSerializer,
        examples=[
            OpenApiExample(
                "Two readings",
                request_only=True,
                value={
                    "readings": [
                        {"sensor": 12, "time": "2026-01-05T10:00:00Z", "value": 21.5, "quality": 0},
                        {"sensor": 12, "time": 1767607260, "value": 21.7},
                    ]
                },
            ),
        ],
    )
    def post(self, request):
        """Validate and store up to 10,000 readings; each rejected reading is named with its index and reason.

        ``time`` is ISO 8601 with an offset, or epoch seconds or milliseconds
        (the unit is inferred from the magnitude). ``quality`` is optional and defaults to good.
        """
        items = self._readings(request.data)
        parsed = parse_readings(items)
        result = ingest(connection.schema_name, parsed.samples)

        rejections = [
            {"index": rejection.index, "sensor": rejection.sensor_id, "reason": rejection.reason}
            for rejection in parsed.rejected
        ]
        # Ingest numbers its rejections by position among the parsed samples.
        rejections.extend(
            {"index": parsed.indexes[rejection.index], "sensor": rejection.sensor_id, "reason": rejection.reason}
            for rejection in result.rejected
        )
        rejections.sort(key=lambda rejection: rejection["index"])
        logger.info(
            "HTTP ingest into schema %s by user %s: %d accepted, %d spooled, %d duplicates, %d rejected",
            connection.schema_name,
            request.user.pk,
            result.accepted,
            result.spooled,
            result.duplicates,
            len(rejections),
        )
        return Response(
            {
                "accepted": result.accepted,
                "spooled": result.spooled,
                "duplicates": result.duplicates,
                "rejected": len(rejections),
                "rejections": rejections,
            }
        )

    def _readings(self, data):
        if not isinstance(data, dict) or "readings" not in data:
            raise ValidationError({"readings": ['The body must be an object with a "readings" list.']})
        items = data["readings"]
        if not isinstance(items, list):
            raise ValidationError({"readings": [f"readings is a {type(items).__name__}; send a list of readings."]})
        if len(items) > MAX_READINGS:
            raise ValidationError(
                {"readings": [f"readings has {len(items)} items; send at most {MAX_READINGS} per request."]}
            )
        return items
