"""WebSocket consumer that streams live values of a tenant's units to HTMX pages and API clients."""

import asyncio
import json
import logging
import time
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db.models import Q
from django.template.loader import render_to_string
from django_tenants.utils import schema_context

from apps.accounts.roles import Capability, has_capability
from apps.accounts.sockets import CLOSE_CREDENTIAL_ENDED, CREDENTIAL_FIELDS
from apps.alarms.choices import AlarmSource
from apps.alarms.permissions import visible_sources
from apps.alarms.push import security_group
from apps.sensors.models import Sensor
from apps.sensors.quality import is_bad, quality_label
from apps.telemetry.live_sequence import current_group_seqs
from apps.units.models import Unit

from .dispatch import CancelSafeConsumerMixin
from .groups import unit_group
from .push import count_dropped_messages
from .sequence import GroupSeqGaps

logger = logging.getLogger(__name__)

# Close codes in the 4000-4999 range that applications may define (RFC 6455, section 7.4.2).
CLOSE_UNAUTHENTICATED = 4401
CLOSE_BAD_REQUEST = 4400
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
# The client fell behind and messages were dropped: it must reconnect and reload its state.
CLOSE_RESYNC = 4409
FORMATS = ("html", "json")
UNAUTHENTICATED_REASON = "Authentication required: send a session cookie, a bearer token or an API key."

# Messages a connection may have waiting for its client. A client that lets
# more pile up is stalled. It is closed with CLOSE_RESYNC, so neither the
# sender nor the other clients wait for it. The outbox fills only once the
# server's send waits: uvicorn 0.54 first buffers 64 KiB (asyncio's default
# high-water mark, about 100 alarm messages) on top of the kernel's send buffer.
# A smaller flood stays in those buffers, so the outbox alone never closes a
# client that stops reading after it. The keepalive does: Procfile.demo and
# the image run uvicorn with --ws-ping-interval 10 --ws-ping-timeout 10, so
# within 20 s of the moment a client stops reading, a ping goes unanswered
# and uvicorn closes the connection with 1011. The writer then ends the
# consumer (see _abandon) at its next send, or once a send has waited
# LIVE_SEND_TIMEOUT_SECONDS (30 s by default).
# NOTE: Daphne 4.2 hands each frame to Twisted and returns at once, so under
# Daphne (runserver) the outbox never fills and a stalled client's frames pile
# up in the server's write buffer instead.
OUTBOX_LIMIT = 100
# Value updates to one client are merged to the newest value per sensor and
# sent at most once per this interval, in seconds, and not before the client
# has taken the previous message. A browser repaints about every 17 ms, so
# HTML gets at most 40 messages a second. JSON clients (historians, HMIs,
# bridges) get at most 100.
COALESCE_SECONDS = {"html": 0.025, "json": 0.010}
# Time a stalled client gets to take the close frame before the connection ends without it.
CLOSE_TIMEOUT_SECONDS = 5
# Seconds from a numbered group message to the next read of the group_seq counters, and between reads
# while numbers are missing. A number that is still the lowest missing one at the next read counts as
# lost, so loss is found within two intervals. Each read is one MGET per consumer.
# NOTE: a sender that takes longer than this between reserving a number and sending it (a stalled
# process, a slow Redis) makes its group's clients resync although nothing was lost.
GAP_CHECK_SECONDS = 2.0
# Close codes of a client that left on purpose (RFC 6455, section 7.4.1). Messages it had not taken are not counted as dropped.
NORMAL_CLOSE_CODES = (1000, 1001)


class LiveValuesConsumer(CancelSafeConsumerMixin, AsyncWebsocketConsumer):
    """Join the groups of the requested units (all units by default) and forward their updates.

    Query parameters: ``unit`` (repeatable unit id), ``format`` ("html",
    the default, sends hx-swap-oob fragments; "json" sends the readings) and
    ``snapshot=1`` (JSON only: send the open alarms of the units first, as a
    message of type "alarms"). Every JSON message carries ``seq``, numbered
    from 1 per connection without a gap, because the consumer closes the
    socket instead of skipping a message. The channel layer may drop group
    messages before the consumer receives them. Senders therefore number them
    per group (``group_seq``, see apps.telemetry.live_sequence), and a
    consumer that finds a number missing closes the client with
    CLOSE_RESYNC within 2 * GAP_CHECK_SECONDS, so that it reconnects with
    snapshot=1. A message sent without ``group_seq`` (its sender could not
    reserve one) is forwarded, but its loss goes unnoticed.

    Messages go through a bounded outbox that one writer task sends in
    order. Alarm changes are queued one by one; live values are merged to
    the newest per sensor while the outbox is busy.

    The socket joins the groups of its credential (``scope["credential"]``,
    see apps.accounts.sockets), whose close messages end it, and it closes
    with 4401 before it would push anything after its token or API key expired.
    """

    async def connect(self):
        self.schema = self.scope["tenant"].schema_name
        user = self.scope.get("user")
        # Every refusal accepts and then closes: a close before the accept reaches the client as an HTTP 403
        # of the handshake, without the code.
        if user is None or not user.is_authenticated or not user.is_active:
            await self._reject(CLOSE_UNAUTHENTICATED, UNAUTHENTICATED_REASON)
            return
        if not has_capability(user, Capability.VIEW_PLANT):
            await self._reject(CLOSE_FORBIDDEN, f"Role {user.role} may not view the plant.")
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
        snapshot = query.get("snapshot", ["0"])[0] == "1"
        if snapshot and self.format != "json":
            await self._reject(CLOSE_BAD_REQUEST, "snapshot=1 needs format=json.")
            return
        self.user_id = user.pk
        credential = self.scope["credential"]
        self.credential_groups = list(credential.groups)
        self.expires_at = credential.expires_at.timestamp() if credential.expires_at else None
        self.seq = 0
        self.outbox = asyncio.Queue(maxsize=OUTBOX_LIMIT)
        self.pending_values = {}
        # Time of the newest value sent per sensor, so that a reading that arrives late is not sent after it.
        self.sent_times = {}
        self.flush_handle = None
        self.last_flush = 0.0
        self.closing = False
        self.in_flight = None
        self.groups_joined = sorted({unit_group(self.schema, sensor["unit_id"]) for sensor in self.sensors.values()})
        # Security alarms have no unit, so they reach only the sockets of users who may see them.
        self.sees_security_alarms = AlarmSource.SECURITY in visible_sources(user)
        if self.sees_security_alarms:
            self.groups_joined.append(security_group(self.schema))
        for group in self.credential_groups:
            await self.channel_layer.group_add(group, self.channel_name)
        # A credential change that committed between authentication and joining sent its close to no one.
        if not await self._credential_unchanged(user):
            await self._leave_groups()
            await self._reject(CLOSE_CREDENTIAL_ENDED, "Credential changed; log in again.")
            return
        # Join before reading the snapshot, so that no change between the two is lost.
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        # Read after joining: every group_seq reserved later is sent to this channel too.
        self.group_gaps = GroupSeqGaps(await self._load_group_seqs(self.groups_joined))
        self.gap_check_handle = None
        self.gap_check_task = None
        await self.accept()
        self.writer = asyncio.create_task(self._write_outbox())
        if snapshot:
            alarms = await self._load_open_alarms(
                {sensor["unit_id"] for sensor in self.sensors.values()}, self.sees_security_alarms
            )
            self._enqueue_json({"type": "alarms", "alarms": alarms})
        logger.info(
            "Live socket opened on schema %s by user %s for %d units", self.schema, user.pk, len(self.groups_joined)
        )

    async def disconnect(self, code):
        # NOTE: messages still waiting in the channel layer for this channel are lost without being counted.
        dropped = 0
        if getattr(self, "outbox", None) is not None and not self.closing:
            # Set before the first await, so that a failing writer does not count the same messages.
            self.closing = True
            dropped = self._discard_queued()
        await self._leave_groups()
        if getattr(self, "flush_handle", None) is not None:
            self.flush_handle.cancel()
        self._stop_gap_checks()
        writer = getattr(self, "writer", None)
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
        if dropped and code not in NORMAL_CLOSE_CODES:
            logger.warning("Live socket of user %s on schema %s went away with code %s; dropped %d queued messages",
                           self.user_id, self.schema, code, dropped)
            await self._count_dropped(dropped)

    async def _leave_groups(self):
        for group in [*getattr(self, "groups_joined", []), *getattr(self, "credential_groups", [])]:
            await self.channel_layer.group_discard(group, self.channel_name)

    @database_sync_to_async
    def _credential_unchanged(self, user):
        with schema_context(self.schema):
            current = type(user)._default_manager.filter(pk=user.pk).values(*CREDENTIAL_FIELDS).first()
        return current is not None and all(current[name] == getattr(user, name) for name in CREDENTIAL_FIELDS)

    async def socket_close(self, event):
        """End the socket because its credential ended or its tenant was suspended (apps.accounts.sockets)."""
        logger.info("Live socket of user %s on schema %s closed with %s: %s",
                    self.user_id, self.schema, event["code"], event["reason"])
        await self._end(event["code"], event["reason"])

    def _credential_expired(self):
        return self.expires_at is not None and time.time() >= self.expires_at

    async def _end_expired(self):
        logger.info("Live socket of user %s on schema %s closed: its token or API key expired",
                    self.user_id, self.schema)
        await self._end(CLOSE_CREDENTIAL_ENDED, "Token or API key expired; reconnect with a new one.")

    async def _end(self, code, reason):
        """Stop sending, leave all groups and close with ``code``, without waiting on a stalled client for long."""
        if self.closing:
            return
        self.closing = True
        self.pending_values.clear()
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        await self._leave_groups()
        self.writer.cancel()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self.close(code=code, reason=reason[:120])
        except TimeoutError:
            raise StopConsumer() from None

    async def _write_outbox(self):
        """Send the queued messages in order; a client that does not read makes this wait.

        A send that fails, or that waits longer than LIVE_SEND_TIMEOUT_SECONDS,
        hands over to _abandon, so this task ends without an exception unless it is cancelled.
        """
        try:
            while True:
                self.in_flight = await self.outbox.get()
                async with asyncio.timeout(settings.LIVE_SEND_TIMEOUT_SECONDS):
                    await self.send(text_data=self.in_flight)
                self.in_flight = None
        except TimeoutError:
            await self._abandon(f"it took no message for {settings.LIVE_SEND_TIMEOUT_SECONDS:g} s", stop=True)
        except OSError as error:
            # uvicorn 0.54 raises ClientDisconnected only after it queued websocket.disconnect,
            # which ends the consumer through disconnect().
            await self._abandon(f"the send failed with {error!r}", stop=False)
        except RuntimeError as error:
            # The server closed the connection itself. It reports the disconnect only once the
            # client has read what was buffered, which a stalled client may never do.
            await self._abandon(f"the send failed with {error!r}", stop=True)

    async def _abandon(self, cause, stop):
        """Count what the client never got and leave all groups, without sending to the client again.

        Runs in the writer after the server closed the connection under it
        (uvicorn's keepalive, a lost connection) or after a send waited too
        long. A close frame would wait behind the same unsent data, so none is
        sent. With ``stop``, a message to this consumer's channel ends it.
        """
        if self.closing:
            return
        self.closing = True
        dropped = self._discard_queued()
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        logger.warning("Live socket of user %s on schema %s abandoned because %s; dropped %d messages",
                       self.user_id, self.schema, cause, dropped)
        # Shielded: disconnect() cancels this task when the server reports the disconnect meanwhile.
        await asyncio.shield(self._leave_and_count(dropped))
        if not stop:
            return
        try:
            # Only a handler of this consumer can raise StopConsumer. A message to a channel whose
            # consumer ended stays in channels_redis 4.3's receive buffer, so none is sent without need.
            await self.channel_layer.send(self.channel_name, {"type": "live.abandoned"})
        except Exception:
            logger.exception("Ending the abandoned live socket of user %s on schema %s failed; "
                             "it ends when the server reports the disconnect", self.user_id, self.schema)

    async def _leave_and_count(self, dropped):
        try:
            await self._leave_groups()
        except Exception:
            # The channel layer drops the channel from the groups after its group expiry.
            logger.exception("Leaving the groups of the abandoned live socket of user %s on schema %s failed",
                             self.user_id, self.schema)
        if dropped:
            await self._count_dropped(dropped)

    async def live_abandoned(self, event):
        """End the consumer after its writer gave up on the client (see _abandon)."""
        raise StopConsumer()

    def _discard_queued(self):
        """Empty the outbox and the merged values; return how many messages the client will not get."""
        dropped = (self.in_flight is not None) + self.outbox.qsize() + (1 if self.pending_values else 0)
        self.in_flight = None
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.pending_values.clear()
        return dropped

    async def _count_dropped(self, dropped):
        try:
            await count_dropped_messages(self.schema, dropped)
        except Exception:
            # The count is for monitoring; ending the socket matters more.
            logger.exception("Counting %d dropped live messages of schema %s failed", dropped, self.schema)

    def _enqueue(self, text):
        """Queue ``text`` for the client; return False when the outbox is full."""
        if self.closing:
            return True
        try:
            self.outbox.put_nowait(text)
        except asyncio.QueueFull:
            return False
        return True

    def _enqueue_json(self, message):
        self.seq += 1
        return self._enqueue(json.dumps({**message, "seq": self.seq}))

    async def _close_stalled(self):
        """Drop what a stalled client has not taken, count it, and close with CLOSE_RESYNC.

        Runs in the handler that found the outbox full, so this consumer reads
        no further group messages meanwhile. They wait in the channel layer,
        which drops them for this channel alone once its capacity is reached.
        """
        # The message that did not fit.
        await self._close_for_resync(1, "stalled")

    async def _close_for_resync(self, lost, cause):
        """Drop what the client has not taken, count it with ``lost`` messages, and close with CLOSE_RESYNC."""
        if self.closing:
            return
        self.closing = True
        self._stop_gap_checks()
        # The messages lost before, the one the client has not taken, the queued ones, and the
        # merged values not yet queued.
        dropped = lost + self._discard_queued()
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)
        logger.warning(
            "Live socket of user %s on schema %s %s; dropped %d messages and closing it for a resync",
            self.user_id, self.schema, cause, dropped,
        )
        await self._count_dropped(dropped)
        self.writer.cancel()
        try:
            # The close frame waits behind the messages the client has not read yet.
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self.close(code=CLOSE_RESYNC, reason="Fell behind; reconnect and reload.")
        except TimeoutError:
            logger.warning("Live socket of user %s on schema %s took no close frame within %d s; ending it",
                           self.user_id, self.schema, CLOSE_TIMEOUT_SECONDS)
            raise StopConsumer() from None

    async def _load_group_seqs(self, groups):
        try:
            return await sync_to_async(current_group_seqs, thread_sensitive=False)(self.schema, groups)
        except Exception:
            logger.exception("Reading the group_seq counters of %d groups of schema %s failed; the first message "
                             "of each group sets its baseline", len(groups), self.schema)
            return {}

    async def _note_group_seq(self, event):
        """Track the event's ``group_seq``, and close the client for a resync once a number is lost for sure.

        Messages without a number (from a sender whose reservation failed) are not tracked.
        """
        group, seq = event.get("group"), event.get("group_seq")
        if self.closing or group is None or seq is None:
            return
        if self.group_gaps.receive(group, seq):
            await self._close_for_gap({group: self.group_gaps.missing(group)})
            return
        if self.gap_check_handle is None and self.gap_check_task is None:
            self.gap_check_handle = asyncio.get_running_loop().call_later(GAP_CHECK_SECONDS, self._start_gap_check)

    def _start_gap_check(self):
        self.gap_check_handle = None
        if not self.closing:
            self.gap_check_task = asyncio.create_task(self._check_gaps())

    async def _check_gaps(self):
        """Compare the numbers received with the counters, and close the client once a missing number is lost.

        Finds the messages lost after the last one that arrived, which no later message reveals.
        """
        try:
            groups = self.group_gaps.take_groups_to_check()
            try:
                reserved = await sync_to_async(current_group_seqs, thread_sensitive=False)(self.schema, groups)
            except Exception:
                logger.exception("Reading the group_seq counters of the live socket of user %s on schema %s failed; "
                                 "retrying in %g s", self.user_id, self.schema, GAP_CHECK_SECONDS)
                reserved = None
            if reserved is not None:
                lost = self.group_gaps.check(reserved)
                if lost:
                    await self._close_for_gap(lost)
                    return
            # Numbers that arrived during the read may have been reserved after it, so they need another read.
            if not self.closing and (reserved is None or self.group_gaps.has_missing()
                                     or self.group_gaps.has_unchecked()):
                self.gap_check_handle = asyncio.get_running_loop().call_later(GAP_CHECK_SECONDS,
                                                                              self._start_gap_check)
        except StopConsumer:
            # Only a handler of this consumer can end it (see _abandon).
            try:
                await self.channel_layer.send(self.channel_name, {"type": "live.abandoned"})
            except Exception:
                logger.exception("Ending the live socket of user %s on schema %s after its close timed out failed; "
                                 "it ends when the server reports the disconnect", self.user_id, self.schema)
        finally:
            if self.gap_check_task is asyncio.current_task():
                self.gap_check_task = None

    async def _close_for_gap(self, lost):
        """Close the client for a resync because the channel layer dropped ``lost`` ({group: count}) messages."""
        gaps = ", ".join(f"{count} of group {group}" for group, count in sorted(lost.items()))
        await self._close_for_resync(sum(lost.values()), f"missed messages in the channel layer ({gaps})")

    def _stop_gap_checks(self):
        handle = getattr(self, "gap_check_handle", None)
        if handle is not None:
            handle.cancel()
            self.gap_check_handle = None
        task = getattr(self, "gap_check_task", None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            self.gap_check_task = None

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

    @database_sync_to_async
    def _load_open_alarms(self, unit_ids, with_security):
        from apps.alarms.models import Alarm
        from apps.alarms.push import alarm_payload

        with schema_context(self.schema):
            scope = Q(unit_id__in=unit_ids)
            if with_security:
                scope |= Q(source=AlarmSource.SECURITY)
            alarms = Alarm.objects.open().filter(scope).select_related("rule", "acknowledged_by")
            return [alarm_payload(alarm) for alarm in alarms.order_by("pk")]

    async def readings_update(self, event):
        """Merge the readings into the pending newest value per sensor and schedule a flush."""
        if self.closing:
            await count_dropped_messages(self.schema, 1)
            return
        if self._credential_expired():
            await self._end_expired()
            return
        for reading in event["readings"]:
            if reading["sensor"] not in self.sensors:
                continue
            pending = self.pending_values.get(reading["sensor"])
            newest = pending["time"] if pending is not None else self.sent_times.get(reading["sensor"])
            # ISO 8601 times in UTC with the same offset sort as strings.
            if newest is None or reading["time"] >= newest:
                self.pending_values[reading["sensor"]] = reading
        if self.pending_values and self.flush_handle is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self.last_flush + COALESCE_SECONDS[self.format] - loop.time())
            self.flush_handle = loop.call_later(delay, self._flush_values)
        await self._note_group_seq(event)

    def _flush_values(self):
        loop = asyncio.get_running_loop()
        self.flush_handle = None
        if self.closing or not self.pending_values:
            return
        if not self.outbox.empty():
            # The client is still taking earlier messages; keep merging values until it catches up.
            self.flush_handle = loop.call_later(COALESCE_SECONDS[self.format], self._flush_values)
            return
        self.last_flush = loop.time()
        readings = list(self.pending_values.values())
        self.pending_values = {}
        for reading in readings:
            self.sent_times[reading["sensor"]] = reading["time"]
        # The outbox is empty here, so the message always fits.
        if self.format == "json":
            self._enqueue_json({"type": "readings", "readings": readings})
            return
        self._enqueue(self._render_values(readings))

    def _render_values(self, readings):
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
        return "".join(fragments)

    async def alarm_update(self, event):
        """Queue an alarm change: the alarm as JSON, or an HTMX fragment that reloads the alarm banner."""
        if self.closing:
            # Sent to this channel before it left its groups.
            await count_dropped_messages(self.schema, 1)
            return
        if self._credential_expired():
            await self._end_expired()
            return
        if self.format == "json":
            queued = self._enqueue_json({"type": "alarm", "alarm": event["alarm"]})
        else:
            queued = self._enqueue(render_to_string("alarms/partials/banner_refresh.html"))
        if not queued:
            await self._close_stalled()
            return
        await self._note_group_seq(event)


class NotFoundConsumer(CancelSafeConsumerMixin, AsyncWebsocketConsumer):
    """Close sockets to paths that no consumer serves, with a code instead of a server error."""

    async def connect(self):
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            # Strangers learn nothing about which paths exist.
            await self.close(code=CLOSE_UNAUTHENTICATED, reason=UNAUTHENTICATED_REASON)
            return
        await self.close(code=CLOSE_NOT_FOUND, reason="No WebSocket endpoint at this path; use /ws/live/.")
