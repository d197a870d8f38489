"""REST endpoints of alarm rules and alarms; the API app registers them with its router."""

import logging
from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response

from apps.audit.mixins import AuditedModelViewSetMixin
from apps.tenants.serializers import RejectUnknownFieldsMixin

from .choices import AlarmSource, AlarmState, Priority
from .kpis import FLEETING_SHORTER_THAN, compute_kpis
from .models import Alarm, AlarmRule, AlarmTransition, NotificationDelivery, NotificationTarget
from .notifications import create_notification_target, rotate_webhook_secret
from .permissions import (
    can_acknowledge_alarm,
    can_acknowledge_alarms,
    can_configure_plant,
    can_shelve_alarm,
    can_shelve_alarms,
    can_view_alarms,
    visible_sources,
)
from .services import (
    MAX_SHELVE_DURATION,
    AlarmActionError,
    acknowledge_alarm,
    remove_rule_from_service,
    return_rule_to_service,
    shelve_alarm,
    unshelve_alarm,
)

logger = logging.getLogger(__name__)

DEFAULT_KPI_WINDOW = timedelta(days=1)
# Maximum KPI window, a leap year. The request loads every activation of the window into memory.
MAX_KPI_WINDOW = timedelta(days=366)
# KPI windows lie within these bounds, so window arithmetic (end + fleeting time) stays inside datetime's range.
EARLIEST_KPI_TIME = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_KPI_TIME = datetime(9999, 1, 1, tzinfo=UTC)
MAX_FLEETING_SECONDS = 3600.0
# DRF's renderer override (?format=json), accepted by every endpoint.
RENDERER_FORMAT_PARAMETER = "format"


class OffsetDateTimeField(serializers.DateTimeField):
    """ISO 8601 date and time that must carry a UTC offset, because a naive one is ambiguous."""

    def to_internal_value(self, value):
        if isinstance(value, str):
            try:
                parsed = parse_datetime(value.strip())
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is None:
                raise serializers.ValidationError(
                    f"{value[:40]!r} has no UTC offset; add one, e.g. {value.strip()[:19]}Z or +01:00."
                )
        return super().to_internal_value(value)


class CanAcknowledgeAlarms(BasePermission):
    message = "Your role may not acknowledge alarms; ask an administrator for the operator role."

    def has_permission(self, request, view):
        return can_acknowledge_alarms(request.user)


class CanShelveAlarms(BasePermission):
    message = "Your role may not shelve alarms; ask an administrator for the operator role."

    def has_permission(self, request, view):
        return can_shelve_alarms(request.user)


class CanViewAlarms(BasePermission):
    message = "Your role may not view alarms; ask an administrator for a role that views the plant or the audit log."

    def has_permission(self, request, view):
        return can_view_alarms(request.user)


class CanViewProcessAlarms(BasePermission):
    message = "Your role may not view process alarms or their KPIs; ask an administrator for a plant role."

    def has_permission(self, request, view):
        return AlarmSource.PROCESS in visible_sources(request.user)


class CanConfigurePlant(BasePermission):
    message = "Your role may not take alarm rules out of service; ask an administrator."

    def has_permission(self, request, view):
        return can_configure_plant(request.user)


class AlarmRuleSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):
    class Meta:
        model = AlarmRule
        fields = (
            "id",
            "sensor",
            "condition",
            "limit",
            "deadband",
            "on_delay",
            "off_delay",
            "realarm_after",
            "stale_after",
            "alarm_state_value",
            "rate_window",
            "rate_per",
            "setpoint",
            "setpoint_sensor",
            "band",
            "priority",
            "message",
            "rationale",
            "enabled",
            "in_service",
            "created_at",
        )
        read_only_fields = ("in_service", "created_at")

    def validate(self, attrs):
        attrs = super().validate(attrs)
        current = {}
        if self.instance is not None:
            current = {
                field.name: getattr(self.instance, field.name)
                for field in AlarmRule._meta.concrete_fields
                if not field.primary_key
            }
        try:
            AlarmRule(**{**current, **attrs}).clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(serializers.as_serializer_error(exc)) from exc
        return attrs


class AlarmTransitionSerializer(serializers.ModelSerializer):
    actor = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = AlarmTransition
        fields = ("time", "recorded_at", "action", "from_state", "to_state", "actor", "comment", "value")


class AlarmSerializer(serializers.ModelSerializer):
    sensor = serializers.IntegerField(source="sensor_id", read_only=True, allow_null=True)
    acknowledged_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    shelved_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Alarm
        fields = (
            "id",
            "source",
            "key",
            "rule",
            "sensor",
            "unit",
            "priority",
            "message",
            "state",
            "condition_active",
            "condition_started_at",
            "activated_at",
            "activation_value",
            "returned_at",
            "acknowledged_at",
            "acknowledged_by",
            "shelved_until",
            "shelve_reason",
            "shelved_by",
            "closed_at",
            "clears_at",
            "backfilled",
        )
        read_only_fields = fields


class AlarmDetailSerializer(AlarmSerializer):
    transitions = AlarmTransitionSerializer(many=True, read_only=True)

    class Meta(AlarmSerializer.Meta):
        fields = (*AlarmSerializer.Meta.fields, "transitions")
        read_only_fields = fields


class AlarmCommentSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class OutOfServiceSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    comment = serializers.CharField(max_length=2000, help_text="Why the rule is taken out of service.")


class ShelveSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    comment = serializers.CharField(max_length=500, help_text="Why the alarm is shelved.")
    until = OffsetDateTimeField(required=False, help_text="When the shelving ends (ISO 8601 with offset).")
    minutes = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=int(MAX_SHELVE_DURATION.total_seconds() // 60),
        help_text="How long the shelving lasts, instead of until.",
    )

    def validate(self, attrs):
        if ("until" in attrs) == ("minutes" in attrs):
            raise serializers.ValidationError(
                "Give either until (a timestamp) or minutes (a duration), not both or neither."
            )
        if "minutes" in attrs:
            attrs["until"] = timezone.now() + timedelta(minutes=attrs.pop("minutes"))
        return attrs


class KpiWindowSerializer(serializers.Serializer):
    start = OffsetDateTimeField(required=False)
    end = OffsetDateTimeField(required=False)
    fleeting_seconds = serializers.FloatField(
        required=False,
        min_value=0.001,
        max_value=MAX_FLEETING_SECONDS,
        default=FLEETING_SHORTER_THAN.total_seconds(),
    )

    def validate(self, attrs):
        for name in ("start", "end"):
            moment = attrs.get(name)
            if moment is not None and not EARLIEST_KPI_TIME <= moment < LATEST_KPI_TIME:
                raise serializers.ValidationError(
                    {name: [(f"{name} {moment.isoformat()} is out of range; give a time from "
                             f"{EARLIEST_KPI_TIME.isoformat()} to before {LATEST_KPI_TIME.isoformat()}.")]}
                )
        end = attrs.get("end") or timezone.now()
        start = attrs.get("start") or end - DEFAULT_KPI_WINDOW
        if start >= end:
            raise serializers.ValidationError(
                {"start": [f"start {start.isoformat()} must be before end {end.isoformat()}."]}
            )
        if end - start > MAX_KPI_WINDOW:
            raise serializers.ValidationError(
                {"start": [(f"The window from start {start.isoformat()} to end {end.isoformat()} is longer than "
                            f"{MAX_KPI_WINDOW.days} days; ask for a shorter window.")]}
            )
        return {"start": start, "end": end, "fleeting_seconds": attrs["fleeting_seconds"]}


class AlarmFilter(filters.FilterSet):
    active = filters.BooleanFilter(method="filter_active", help_text="Only alarms whose condition is active now.")
    unacknowledged = filters.BooleanFilter(
        method="filter_unacknowledged", help_text="Only alarms waiting for an acknowledgement."
    )
    priority = filters.MultipleChoiceFilter(choices=Priority.choices)
    state = filters.MultipleChoiceFilter(choices=AlarmState.choices)
    activated_after = filters.IsoDateTimeFilter(field_name="activated_at", lookup_expr="gte")
    activated_before = filters.IsoDateTimeFilter(field_name="activated_at", lookup_expr="lt")

    class Meta:
        model = Alarm
        fields = ("source", "unit", "rule", "backfilled")

    def filter_active(self, queryset, name, value):
        active = Alarm.objects.active()
        return queryset.filter(pk__in=active) if value else queryset.exclude(pk__in=active)

    def filter_unacknowledged(self, queryset, name, value):
        unacknowledged = Alarm.objects.unacknowledged()
        return queryset.filter(pk__in=unacknowledged) if value else queryset.exclude(pk__in=unacknowledged)


class AlarmRuleViewSet(AuditedModelViewSetMixin, viewsets.ModelViewSet):
    """Alarm rules, with the actions remove-from-service and return-to-service."""

    queryset = AlarmRule.objects.select_related("sensor")
    serializer_class = AlarmRuleSerializer
    filter_backends = (filters.DjangoFilterBackend,)
    filterset_fields = ("sensor", "condition", "priority", "enabled", "in_service")

    @extend_schema(request=OutOfServiceSerializer, responses=AlarmRuleSerializer)
    @action(
        detail=True, methods=["post"], url_path="remove-from-service", permission_classes=[IsAuthenticated, CanConfigurePlant]
    )
    def remove_from_service(self, request, pk=None):
        """Take the rule out of service with a reason; its open alarm goes out of service too. 409 when already out."""
        payload = OutOfServiceSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return self._perform(remove_rule_from_service, comment=payload.validated_data["comment"])

    @extend_schema(request=AlarmCommentSerializer, responses=AlarmRuleSerializer)
    @action(
        detail=True, methods=["post"], url_path="return-to-service", permission_classes=[IsAuthenticated, CanConfigurePlant]
    )
    def return_to_service(self, request, pk=None):
        """Put the rule back in service; its out-of-service alarm closes. 409 when already in service."""
        payload = AlarmCommentSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return self._perform(return_rule_to_service, comment=payload.validated_data["comment"])

    def _perform(self, service, **arguments):
        rule = self.get_object()
        try:
            service(rule, actor=self.request.user, **arguments)
        except AlarmActionError as exc:
            logger.info("Service change of alarm rule %s by user %s rejected: %s", rule.pk, self.request.user.pk, exc)
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        rule.refresh_from_db()
        return Response(AlarmRuleSerializer(rule).data)


class AlarmViewSet(viewsets.ReadOnlyModelViewSet):
    """Alarm occurrences, newest first, with the operator actions acknowledge, shelve and unshelve.

    Each user sees the alarms of the sources their role may see: process
    alarms with the plant roles, security alarms with Admin and Auditor.
    """

    queryset = Alarm.objects.select_related("rule", "acknowledged_by", "shelved_by")
    serializer_class = AlarmSerializer
    filter_backends = (filters.DjangoFilterBackend,)
    filterset_class = AlarmFilter
    permission_classes = (IsAuthenticated, CanViewAlarms)

    def get_queryset(self):
        queryset = super().get_queryset().of_sources(visible_sources(self.request.user))
        if self.action == "retrieve":
            queryset = queryset.prefetch_related("transitions__actor")
        return queryset

    def get_serializer_class(self):
        if self.action == "retrieve":
            return AlarmDetailSerializer
        return super().get_serializer_class()

    @extend_schema(request=AlarmCommentSerializer, responses=AlarmSerializer)
    @action(detail=True, methods=["post"], permission_classes=[IsAuthenticated, CanAcknowledgeAlarms])
    def acknowledge(self, request, pk=None):
        """Acknowledge the alarm; 409 when it is not unacknowledged, e.g. another operator was first."""
        payload = self._validated(AlarmCommentSerializer, request)
        return self._perform(
            acknowledge_alarm, can_acknowledge_alarm, actor=request.user, comment=payload["comment"]
        )

    @extend_schema(request=ShelveSerializer, responses=AlarmSerializer)
    @action(detail=True, methods=["post"], permission_classes=[IsAuthenticated, CanShelveAlarms])
    def shelve(self, request, pk=None):
        """Shelve the alarm with a reason until a time or for some minutes (at most one day)."""
        payload = self._validated(ShelveSerializer, request)
        return self._perform(
            shelve_alarm, can_shelve_alarm, actor=request.user, until=payload["until"], comment=payload["comment"]
        )

    @extend_schema(request=AlarmCommentSerializer, responses=AlarmSerializer)
    @action(detail=True, methods=["post"], permission_classes=[IsAuthenticated, CanShelveAlarms])
    def unshelve(self, request, pk=None):
        """Return a shelved alarm to the alarm list, or close it when its condition has cleared."""
        payload = self._validated(AlarmCommentSerializer, request)
        return self._perform(unshelve_alarm, can_shelve_alarm, actor=request.user, comment=payload["comment"])

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "start",
                OpenApiTypes.DATETIME,
                description="Inclusive start (ISO 8601 with offset); default one day before end. "
                "The window is at most 366 days, within 1970 to 9998.",
            ),
            OpenApiParameter(
                "end", OpenApiTypes.DATETIME, description="Exclusive end (ISO 8601 with offset); default now."
            ),
            OpenApiParameter(
                "fleeting_seconds",
                OpenApiTypes.DOUBLE,
                description="An activation that returns to normal within this many seconds is fleeting; "
                "from 0.001 to 3600, default 5.",
            ),
        ],
        responses=OpenApiTypes.OBJECT,
    )
    @action(detail=False, methods=["get"], permission_classes=[IsAuthenticated, CanViewProcessAlarms])
    def kpis(self, request):
        """Return the KPIs of process alarms in [start, end): rates, flood, chattering, fleeting, stale, bad actors, priorities."""
        known = {*KpiWindowSerializer().fields, RENDERER_FORMAT_PARAMETER}
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            raise serializers.ValidationError(
                {name[:64]: [f"Unknown parameter; this endpoint reads {', '.join(sorted(known))}."] for name in unknown}
            )
        window = KpiWindowSerializer(data=request.query_params)
        window.is_valid(raise_exception=True)
        start = window.validated_data["start"]
        end = window.validated_data["end"]
        fleeting = timedelta(seconds=window.validated_data["fleeting_seconds"])
        return Response(asdict(compute_kpis(start, end, fleeting_shorter_than=fleeting)))

    def _validated(self, serializer_class, request):
        serializer = serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def _perform(self, service, allowed, **arguments):
        alarm = self.get_object()
        if not allowed(self.request.user, alarm):
            raise PermissionDenied(
                f"Your role may not act on {alarm.get_source_display().lower()} alarm {alarm.pk}; ask an administrator."
            )
        try:
            service(alarm, **arguments)
        except AlarmActionError as exc:
            # The alarm's state does not allow the action, e.g. another operator acknowledged it first.
            logger.info("Alarm action on alarm %s by user %s rejected: %s", alarm.pk, self.request.user.pk, exc)
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        alarm = self.get_queryset().get(pk=alarm.pk)
        return Response(AlarmSerializer(alarm).data)


class NotificationTargetSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):
    class Meta:
        model = NotificationTarget
        fields = ("id", "name", "kind", "purpose", "email", "url", "min_priority", "escalate_after", "enabled", "created_at")
        read_only_fields = ("created_at",)

    def validate(self, attrs):
        attrs = super().validate(attrs)
        try:
            NotificationTarget(**attrs).clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(serializers.as_serializer_error(exc)) from exc
        return attrs


class NotificationDeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = NotificationDelivery
        fields = (
            "id", "target", "alarm", "event", "status", "attempts", "response_status", "last_error", "created_at",
            "delivered_at", "claimed_until", "next_attempt_at",
        )
        read_only_fields = fields


class NotificationTargetViewSet(
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    mixins.ListModelMixin,
    viewsets.GenericViewSet,
):
    """Email and webhook targets of alarm notifications; a webhook's secret is returned only on create and rotate."""

    queryset = NotificationTarget.objects.all()
    serializer_class = NotificationTargetSerializer

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        target, secret = create_notification_target(actor=request.user, **serializer.validated_data)
        data = self.get_serializer(target).data
        if secret is not None:
            data["secret"] = secret
        return Response(data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        from django.db import transaction

        from apps.audit import services as audit
        from apps.audit.choices import AuditAction

        with transaction.atomic():
            audit.record(AuditAction.OBJECT_DELETED, actor=self.request.user, obj=instance)
            instance.delete()

    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["post"], url_path="rotate-secret")
    def rotate_secret(self, request, pk=None):
        """Replace the webhook's signing secret and return the new one; this is the only time it is shown."""
        target = self.get_object()
        try:
            secret = rotate_webhook_secret(target, actor=request.user)
        except ValueError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response({"id": target.pk, "secret": secret})


class NotificationDeliveryViewSet(viewsets.ReadOnlyModelViewSet):
    """The delivery log of alarm notifications, newest first."""

    queryset = NotificationDelivery.objects.all()
    serializer_class = NotificationDeliverySerializer
    filter_backends = (filters.DjangoFilterBackend,)
    filterset_fields = ("target", "alarm", "status", "event")
