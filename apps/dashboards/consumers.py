"""WebSocket consumer that streams live values of a tenant's units to HTMX pages and API clients."""

import json
import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string
from django_tenants.utils import schema_context

from apps.accounts.roles import Capability, has_capability
from apps.sensors.models import Sensor
from apps.sensors.quality import is_bad, quality_label
from apps.units.models import Unit

from .groups import unit_group

logger = logging.getLogger(__name__)

# Close codes in the 4000-4999 range that applications may define (RFC 6455, section 7.4.2).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_BAD_REQUEST = 4400
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
FORMATS = ("html", "json")


class LiveValuesConsumer(AsyncWebsocketConsumer):
    """Join the groups of the requested units (all units by default) and forward their updates.

    Query parameters: ``unit`` (repeatable unit id) and ``format`` ("html",
    the default, sends hx-swap-oob fragments; "json" sends the readings).
    """

    async def connect(self):
        self.schema = self.scope["tenant"].schema_name
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not has_capability(user, Capability.VIEW_PLANT):
            logger.info("Live socket on schema %s refused: role %s of user %s may not view the plant",
                        self.schema, user.role, user.pk)
            await self.close(code=CLOSE_FORBIDDEN)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.format = query.get("format", ["html"])[0]
        if self.format not in FORMATS:
            await self._reject(CLOSE_BAD_REQUEST, f"format {self.format[:32]!r} is invalid; use 'html' or 'json'.")
            return
        try:
            requested_units = {int(unit) for unit in query.get("unit", [])}
        except ValueError:
            await self._reject(CLOSE_BAD_REQUEST, "unit must be a unit id (a whole number); repeat it for several units.")
            return
        self.sensors, unknown_units = await self._load_sensors(requested_units)
        if unknown_units:
            await self._reject(CLOSE_NOT_FOUND, f"unit {sorted(unknown_units)[:10]} not found in this tenant.")
            return
        self.groups_joined = sorted({unit_group(self.schema, sensor["unit_id"]) for sensor in self.sensors.values()})
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        logger.info(
            "Live socket opened on schema %s by user %s for %d units", self.schema, user.pk, len(self.groups_joined)
        )

    async def disconnect(self, code):
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _reject(self, code, reason):
        """Accept and close at once, so that the client can read the close code and reason."""
        logger.info("Live socket on schema %s closed with %s: %s", self.schema, code, reason)
        await self.accept()
        await self.close(code=code, reason=reason[:120])

    @database_sync_to_async
    def _load_sensors(self, unit_ids):
        """Return the sensors of the requested units (all units when none is named) and the unknown unit ids."""
        with schema_context(self.schema):
            sensors = Sensor.objects.all()
            unknown = set()
            if unit_ids:
                sensors = sensors.filter(unit_id__in=unit_ids)
                unknown = unit_ids - set(Unit.objects.filter(id__in=unit_ids).values_list("id", flat=True))
            found = {
                sensor["id"]: sensor
                for sensor in sensors.values("id", "unit_id", "decimals", "engineering_unit")
            }
            return found, unknown

    async def readings_update(self, event):
        readings = [reading for reading in event["readings"] if reading["sensor"] in self.sensors]
        if not readings:
            return
        if self.format == "json":
            await self.send(text_data=json.dumps({"type": "readings", "readings": readings}))
            return
        fragments = []
        for reading in readings:
            sensor = self.sensors[reading["sensor"]]
            fragments.append(
                render_to_string(
                    "dashboards/partials/sensor_value.html",
                    {
                        "sensor_id": reading["sensor"],
                        "value": reading["value"],
                        "decimals": sensor["decimals"],
                        "engineering_unit": sensor["engineering_unit"],
                        "time": reading["time"],
                        "quality": reading["quality"],
                        "quality_label": quality_label(reading["quality"]),
                        "bad": is_bad(reading["quality"]),
                        "oob": True,
                    },
                )
            )
        await self.send(text_data="".join(fragments))

    async def alarm_update(self, event):
        """Forward an alarm change: the alarm as JSON, or an HTMX fragment that reloads the alarm banner."""
        if self.format == "json":
            await self.send(text_data=json.dumps({"type": "alarm", "alarm": event["alarm"]}))
            return
        await self.send(text_data=render_to_string("alarms/partials/banner_refresh.html"))


class NotFoundConsumer(AsyncWebsocketConsumer):
    """Close sockets to paths that no consumer serves, with a code instead of a server error."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            # Strangers learn nothing about which paths exist.
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND, reason="No WebSocket endpoint at this path; use /ws/live/.")
