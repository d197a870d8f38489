"""One-off device sessions of setpoint writes and connection tests.

In a process whose Modbus poll loop runs (a Celery worker that has polled), a Modbus TCP
session leases the device's pooled connection on that loop. It then opens no second TCP
connection, which many devices limit to a few, and never interleaves with a poll of the
device. Everywhere else, above all in the web process, the session opens a connection of
its own and closes it at the end. The web process has no long-lived event loop to keep a
pymodbus client on, and a connection kept open there between rare requests would hold
one of the device's connection slots. MQTT, OPC UA and DNP3 sessions always use a
connection of their own, because their long-lived connections live in the gateway process.
A DNP3 setpoint write opens no session while a gateway holds the device: it runs on the
gateway's master (apps.protocols.gateway_commands).
"""

import asyncio
import logging
import threading

from django.db import connection
from django.db.models import prefetch_related_objects

from .choices import Protocol
from .drivers.base import DeviceUnreachable, SubscriptionDriver, UnconfirmedWrite, get_driver
from .modbus.pool import ConnectFailed, running_poll_loop
from .polling import poll_budget

logger = logging.getLogger(__name__)


def make_driver(device):
    """Return an unconnected driver of ``device`` with its certificates loaded."""
    # Drivers run on an event loop, where the certificates could not be loaded lazily.
    prefetch_related_objects(
        [device], "client_certificate", "trusted_certificates", "trusted_certificates__revocation_lists"
    )
    driver_class = get_driver(device.protocol)
    if issubclass(driver_class, SubscriptionDriver):
        return driver_class(device, schema=connection.schema_name)
    return driver_class(device)


def run_session(driver, work):
    """Connect ``driver``, return the result of awaiting ``work(driver)``, and release the connection.

    Raise DeviceUnreachable when the device does not respond; exceptions of ``work`` pass through.
    """
    device = driver.device
    handle = running_poll_loop() if device.protocol == Protocol.MODBUS_TCP else None
    if handle is None or threading.current_thread() is handle.thread:
        return asyncio.run(_own_session(driver, work))

    schema = connection.schema_name
    # A poll of the device may hold the pooled connection for its whole budget before this session gets it.
    budget = 2 * poll_budget(device)
    future = asyncio.run_coroutine_threadsafe(_pooled_session(handle.pool, schema, driver, work, budget), handle.loop)
    return future.result()


async def _own_session(driver, work):
    async with driver:
        return await work(driver)


async def _pooled_session(pool, schema, driver, work, budget):
    device = driver.device
    try:
        async with asyncio.timeout(budget):
            for attempt in (1, 2):
                async with pool.lease(schema, device) as pooled:
                    reused = pooled.reused
                    driver.attach(pooled.client)
                    try:
                        return await work(driver)
                    except DeviceUnreachable as exc:
                        # A device that restarted or dropped an idle connection fails the first request.
                        # Writes are safe to repeat because each sets an absolute value. An unconfirmed write
                        # is not repeated, so a failed reconnect cannot turn it into "not written".
                        if not reused or attempt == 2 or isinstance(exc, UnconfirmedWrite):
                            raise
                        logger.info(
                            "Schema %s device %s: pooled connection failed (%s); reconnecting once",
                            schema, device.pk, exc,
                        )
                        pool.discard(schema, device, str(exc))
    except ConnectFailed as exc:
        raise DeviceUnreachable(str(exc)) from exc
    except TimeoutError:
        # NOTE: a budget that runs out while a write is in flight reports it as not written, although it may
        # have reached the device. Each request's own timeout (device.timeout) usually ends it first.
        raise DeviceUnreachable(
            f"Device {device.pk} at {device.host}:{device.port} did not finish the request within {budget:g} s."
        ) from None
