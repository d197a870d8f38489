"""MQTT publisher of the simulated plant: one topic per point, a plain number per message.

Topics are ``<prefix>/<device id>/<point key>``, e.g. ``thermacore/sim/1/supply_temp``.
Payloads are numbers as JSON reads them, ``1`` and ``0`` for states, and ``NaN`` for a NaN
fault. Messages are sent with QoS 0 and not retained, as a field gateway's telemetry would be.
``<prefix>/status`` holds ``online`` while the publisher is connected and ``offline``
otherwise (retained, QoS 1, and the will message for a lost connection).
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from apps.protocols.simulator.faults import FaultInjector
from apps.protocols.simulator.plant import Plant

__all__ = ["PlantMqttPublisher", "format_payload"]

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 30
# Seconds stop() waits for the broker to acknowledge the offline status.
STATUS_TIMEOUT_SECONDS = 5


def format_payload(value: float | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


class PlantMqttPublisher:
    """Publishes every point of a Plant (or FaultInjector) to a broker each time ``publish`` is called."""

    def __init__(self, plant: Plant | FaultInjector, *, host: str = "127.0.0.1", port: int = 1883,
                 prefix: str = "thermacore/sim") -> None:
        if not prefix or "+" in prefix or "#" in prefix:
            raise ValueError(f"Invalid MQTT topic prefix {prefix!r}. Pass a topic without wildcards, e.g. 'plant/sim'.")
        self.plant = plant
        self.host = host
        self.port = port
        self.prefix = prefix.rstrip("/")
        self.published = 0
        self.connects = 0
        self._client: mqtt.Client | None = None
        self._restarting = False

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/status"

    def topic(self, device_id: int, key: str) -> str:
        return f"{self.prefix}/{device_id}/{key}"

    async def start(self) -> None:
        """Connect to the broker; raise OSError when it cannot be reached."""
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"thermacore-simulator-{uuid.uuid4().hex[:8]}")
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        await asyncio.to_thread(client.connect, self.host, self.port, KEEPALIVE_SECONDS)
        client.loop_start()
        client.publish(self.status_topic, "online", qos=1, retain=True)
        self._client = client
        self.connects += 1
        logger.info("Plant simulator publishing to MQTT broker %s:%d under %s", self.host, self.port, self.prefix)

    def publish(self) -> None:
        """Publish the current value of every point; with QoS 0, paho drops messages while the broker is away."""
        if self._client is None:
            if self._restarting:
                return
            raise RuntimeError("The MQTT publisher is not started. Call start() first.")
        for unit in self.plant.units:
            for key, value in self.plant.values(unit).items():
                self._client.publish(self.topic(unit.device_id, key), format_payload(value), qos=0)
                self.published += 1

    async def stop(self) -> None:
        if self._client is None:
            return
        client, self._client = self._client, None
        status = client.publish(self.status_topic, "offline", qos=1, retain=True)
        try:
            await asyncio.to_thread(status.wait_for_publish, STATUS_TIMEOUT_SECONDS)
        except (RuntimeError, ValueError) as exc:
            # paho raises these when the status was not sent, e.g. with the connection gone.
            # The broker then sends the will message instead.
            logger.warning("Plant simulator could not publish offline status to %s:%d: %s", self.host, self.port, exc)
        await asyncio.to_thread(client.disconnect)
        await asyncio.to_thread(client.loop_stop)
        logger.info("Plant simulator stopped publishing to %s:%d after %d messages", self.host, self.port,
                    self.published)

    async def restart(self, down_for: float) -> None:
        """Disconnect from the broker, publish nothing for ``down_for`` seconds, then connect again."""
        if self._client is None and not self._restarting:
            raise RuntimeError("The MQTT publisher is not started. Call start() first.")
        # Until a connect succeeds, publish() sends nothing and the next restart tries again.
        self._restarting = True
        await self.stop()
        logger.info("Plant simulator MQTT publisher for %s:%d down for %.3g s", self.host, self.port, down_for)
        await asyncio.sleep(down_for)
        await self.start()
        self._restarting = False
        logger.info("Plant simulator MQTT publisher reconnected to %s:%d", self.host, self.port)
