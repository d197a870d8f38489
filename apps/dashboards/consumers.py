"""WebSocket consumer that streams live values of a tenant's units to HTMX pages and API clients."""

import json
import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string
from django_tenants.utils import schema_context

from apps.sensors.models import Sensor
from apps.telemetry.quality import is_bad, quality_label

from .groups import unit_group

logger = logging.getLogger(__name__)

# Close codes in the 4000-4999 range that applications may define (RFC 6455, section 7.4.2).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_BAD_REQUEST = 4400


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
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.format = query.get("format", ["html"])[0]
        try:
            requested_units = {int(unit) for unit in query.get("unit", [])}
        except ValueError:
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        self.sensors = await self._load_sensors(requested_units)
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

    @database_sync_to_async
    def _load_sensors(self, unit_ids):
        with schema_context(self.schema):
            sensors = Sensor.objects.all()
            if unit_ids:
                sensors = sensors.filter(unit_id__in=unit_ids)
            return {
                sensor["id"]: sensor
                for sensor in sensors.values("id", "unit_id", "decimals", "engineering_unit")
            }

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
