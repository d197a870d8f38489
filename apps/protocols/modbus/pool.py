"""Modbus TCP connections kept open across polls, one pool per worker process.

A pymodbus client belongs to the event loop it connected on, and a Celery task that
called ``asyncio.run`` per poll would leave its connections bound to a closed loop. So
each worker process runs one long-lived event loop in a daemon thread (``poll_loop``),
every poll task hands its coroutine to that loop, and the pool lives on it. The loop
and pool are made lazily in the process that polls, so a prefork worker's children
never share a parent's loop or sockets.

Connections are keyed by tenant schema and device id, and remember the host, port and
the other connection settings. A poll with different settings closes the old
connection and opens a new one. A connection is also closed after a transport error,
after ``idle_seconds`` without a poll, and at worker shutdown. Each connection has a
lock, so two polls of one device never share it, although the poll lease already
prevents that.
"""

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from celery.signals import worker_process_shutdown
from django.conf import settings
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException

from ..drivers.base import DeviceUnreachable, check_device_host

logger = logging.getLogger(__name__)

# Seconds a connection may stay unused before the pool closes it (THERMACORE_MODBUS_IDLE_SECONDS in production).
DEFAULT_IDLE_SECONDS = 120.0


class ConnectFailed(Exception):
    """The device refused the connection or did not respond to it; the message names the cause."""


def client_settings(device):
    """Return the settings besides host and port that the client is built with, as a tuple to compare."""
    return (device.timeout,)


@dataclass
class PooledConnection:
    key: tuple
    # Made by each connect, for the address that the host check returned; None until the first connect.
    client: AsyncModbusTcpClient | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    # Whether a poll has used the connection since it was opened, so an error may mean it went stale.
    reused: bool = False


class ModbusConnectionPool:
    """Connected AsyncModbusTcpClients of one event loop, keyed by (schema, device id)."""

    def __init__(self, idle_seconds=DEFAULT_IDLE_SECONDS):
        self.idle_seconds = idle_seconds
        self.connections = {}
        self.opened = 0
        self._reaper = None

    @contextlib.asynccontextmanager
    async def lease(self, schema, device):
        """Yield a connected PooledConnection for ``device``, held by this poll alone.

        Raise ConnectFailed when no connection could be opened. An exception inside the
        block closes the connection, so the next poll starts afresh.
        """
        self._start_reaper()
        identity = (schema, device.pk)
        key = (schema, device.pk, device.host, device.port, client_settings(device))
        entry = self.connections.get(identity)
        if entry is not None and entry.key != key:
            logger.info(
                "Schema %s device %s: connection settings changed, closing the connection to %s:%s",
                schema, device.pk, entry.key[2], entry.key[3],
            )
            self._close(identity, entry)
            entry = None
        if entry is None:
            entry = PooledConnection(key)
            self.connections[identity] = entry

        async with entry.lock:
            # A connection discarded while this poll waited for the lock is put back into service.
            self.connections.setdefault(identity, entry)
            if entry.client is None or not entry.client.connected:
                await self._connect(schema, device, entry)
            try:
                yield entry
            except BaseException as exc:
                # After a timeout or broken link the client may hold a half-finished transaction.
                self.discard(schema, device, repr(exc))
                raise
            finally:
                entry.reused = True
                entry.last_used = time.monotonic()

    def discard(self, schema, device, reason):
        """Close the connection of ``device`` after an error; the next poll opens a new one."""
        identity = (schema, device.pk)
        entry = self.connections.get(identity)
        if entry is not None:
            logger.info(
                "Schema %s device %s: closing the connection to %s:%s after an error: %s",
                schema, device.pk, device.host, device.port, reason,
            )
            self._close(identity, entry)

    def close_all(self, reason):
        for identity, entry in list(self.connections.items()):
            logger.info(
                "Schema %s device %s: closing the connection to %s:%s (%s)",
                identity[0], identity[1], entry.key[2], entry.key[3], reason,
            )
            self._close(identity, entry)
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None

    def close_idle(self, now=None):
        now = time.monotonic() if now is None else now
        for identity, entry in list(self.connections.items()):
            if not entry.lock.locked() and now - entry.last_used >= self.idle_seconds:
                logger.info(
                    "Schema %s device %s: closing the connection to %s:%s, unused for %.0f s",
                    identity[0], identity[1], entry.key[2], entry.key[3], now - entry.last_used,
                )
                self._close(identity, entry)

    async def _connect(self, schema, device, entry):
        address = f"{device.host}:{device.port}"
        was_open = entry.reused
        try:
            ip_address = await check_device_host(device)
        except DeviceUnreachable as exc:
            self._close((schema, device.pk), entry)
            raise ConnectFailed(str(exc)) from exc
        if entry.client is not None:
            entry.client.close()
        # pymodbus resolves the host it was made with on every connect, so the client gets the checked address.
        entry.client = AsyncModbusTcpClient(
            ip_address, port=device.port, timeout=device.timeout, retries=0, reconnect_delay=0
        )
        started = time.monotonic()
        try:
            connected = await entry.client.connect()
        except (OSError, ConnectionException) as exc:
            self._close((schema, device.pk), entry)
            raise ConnectFailed(f"Cannot connect to {address}: {exc}") from exc
        if not connected:
            self._close((schema, device.pk), entry)
            # pymodbus reports a failed connect only as False, so the elapsed time shows the cause.
            if time.monotonic() - started < device.timeout:
                reason = "connection refused or host unreachable"
            else:
                reason = f"no response within {device.timeout:g} s"
            raise ConnectFailed(f"Cannot connect to {address}: {reason}.")
        self.opened += 1
        entry.reused = False
        logger.info(
            "Schema %s device %s: %s Modbus TCP connection to %s (%s)",
            schema, device.pk, "reopened the" if was_open else "opened a", address, ip_address,
        )

    def _close(self, identity, entry):
        if entry.client is not None:
            entry.client.close()
        if self.connections.get(identity) is entry:
            del self.connections[identity]

    def _start_reaper(self):
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self):
        while True:
            await asyncio.sleep(max(self.idle_seconds / 2, 0.05))
            self.close_idle()


class _PollLoop:
    """An event loop in a daemon thread of this process, with the process's connection pool."""

    def __init__(self):
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.pool = ModbusConnectionPool(settings.PROTOCOLS_MODBUS_IDLE_SECONDS)
        self.thread = threading.Thread(target=self._run, name=f"modbus-poll-loop-{self.pid}", daemon=True)
        self.thread.start()
        logger.info("Process %s: started the Modbus poll loop", self.pid)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def stop(self, reason):
        async def close():
            self.pool.close_all(reason)

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=5)
        except (TimeoutError, RuntimeError) as exc:
            logger.warning("Process %s: closing Modbus connections failed: %r", self.pid, exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        logger.info("Process %s: stopped the Modbus poll loop (%s)", self.pid, reason)


_poll_loop = None
_poll_loop_lock = threading.Lock()


def poll_loop():
    """Return this process's poll loop, starting it on first use and again in a forked child."""
    global _poll_loop
    with _poll_loop_lock:
        if _poll_loop is None or _poll_loop.pid != os.getpid() or not _poll_loop.thread.is_alive():
            _poll_loop = _PollLoop()
        return _poll_loop


def running_poll_loop():
    """Return this process's poll loop if a poll already started it, else None; never start one."""
    with _poll_loop_lock:
        handle = _poll_loop
    if handle is None or handle.pid != os.getpid() or not handle.thread.is_alive():
        return None
    return handle


def run_on_poll_loop(coroutine_function, *args):
    """Run ``coroutine_function(pool, *args)`` on the poll loop and return its concurrent.futures.Future."""
    handle = poll_loop()
    return asyncio.run_coroutine_threadsafe(coroutine_function(handle.pool, *args), handle.loop)


def stop_poll_loop(reason="worker shutdown"):
    global _poll_loop
    with _poll_loop_lock:
        handle, _poll_loop = _poll_loop, None
    if handle is not None and handle.pid == os.getpid() and handle.thread.is_alive():
        handle.stop(reason)


@worker_process_shutdown.connect
def _close_on_worker_shutdown(**kwargs):
    stop_poll_loop("worker process shutdown")


atexit.register(stop_poll_loop, "process exit")
