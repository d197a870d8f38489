"""DNP3 master driver on yadnp3 (opendnp3 bindings), run by the gateway.

The master enables unsolicited responses, polls integrity (class 1, 2, 3 events plus the
static data in float and flag-carrying variations) every ``integrity_interval`` and, when
set, the event classes every ``event_poll_interval``. opendnp3 itself reacts to the
outstation's IIN bits: on "device restart" it clears the bit and runs its startup
integrity poll, and on "need time" it synchronises the clock when ``time_sync`` is on.
That startup poll reads events and class 0 in the outstation's default variations, which
are often integers for analogs, so its integer analog values are dropped and the driver's
own integrity poll with float variations runs right after it. Later events arrive in the
variations the outstation is configured for.

Setpoints go to binary output status points as control relay output blocks and to analog
output status points as analog output blocks (``apps.protocols.dnp3.commands``), by select
before operate or direct operate. ``read`` scans the output status of the points, which is how
a setpoint is read back, both on a session of its own and on the gateway's connection
(``apps.protocols.gateway_commands``).

With a client certificate the channel is TLS with mutual authentication. opendnp3 loads
the trust list, certificate and key from files on every connect, so they are written to a
private temporary directory (0700, files 0600) for the life of the channel and removed on
close.

opendnp3 calls back from its own threads; samples reach the event loop through
``call_soon_threadsafe``.
"""

import asyncio
import atexit
import logging
import os
import shutil
import tempfile
import threading
from datetime import datetime, timezone

import opendnp3

from ..choices import Dnp3OperateMode
from ..dnp3.commands import READ_BACK_VARIATIONS, build_command, status_text
from ..dnp3.values import POINT_TYPES, measurement_time, to_sample
from .base import (
    DeviceUnreachable,
    SubscriptionDriver,
    UnconfirmedWrite,
    WriteRejected,
    check_device_host,
    register_driver,
)

logger = logging.getLogger(__name__)

# Static objects requested by the integrity poll, in variations that carry flags and,
# for analogs, 32-bit floats, so the values are never truncated to integers.
INTEGRITY_HEADERS = (
    (60, 2), (60, 3), (60, 4),  # class 1, 2 and 3 events
    (1, 2),  # binary inputs with flags
    (3, 2),  # double-bit binary inputs with flags
    (10, 2),  # binary output status with flags
    (20, 1),  # 32-bit counters with flags
    (21, 1),  # 32-bit frozen counters with flags
    (30, 5),  # analog inputs, single-precision float with flags
    (40, 3),  # analog output status, single-precision float with flags
)
# Analog variations that carry integers: static groups 30 and 40, events of groups 32 and 42.
INTEGER_ANALOG_VARIATIONS = {
    *(f"Group30Var{variation}" for variation in (1, 2, 3, 4)),
    *(f"Group32Var{variation}" for variation in (1, 2, 3, 4)),
    *(f"Group40Var{variation}" for variation in (1, 2)),
    *(f"Group42Var{variation}" for variation in (1, 2, 3, 4)),
}
CHANNEL_RETRY_MIN_MS = 500
# Command task results after which a request may have left without its response arriving. A task that
# never started (FAILURE_START_TIMEOUT) or whose request could not be built sent nothing.
NO_RESPONSE_COMPLETIONS = {
    opendnp3.TaskCompletion.FAILURE_RESPONSE_TIMEOUT,
    opendnp3.TaskCompletion.FAILURE_NO_COMMS,
    opendnp3.TaskCompletion.FAILURE_BAD_RESPONSE,
}
# Point states of a select before operate whose operate request may have been sent.
OPERATE_SENT_STATES = {
    opendnp3.CommandPointState.SELECT_SUCCESS,
    opendnp3.CommandPointState.OPERATE_FAIL,
    opendnp3.CommandPointState.SUCCESS,
}
# "None" is a Python keyword, so the member is looked up by name.
TIME_SYNC_OFF = opendnp3.TimeSyncMode.__members__["None"]

_manager = None
_manager_lock = threading.Lock()


def dnp3_manager():
    """Return the process's opendnp3 manager, which owns the I/O threads of every channel."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = opendnp3.DNP3Manager(1)
            atexit.register(_manager.Shutdown)
        return _manager


@register_driver
class Dnp3Driver(SubscriptionDriver):
    protocol = "dnp3"

    def __init__(self, device, *, schema=""):
        super().__init__(device, schema=schema)
        self.channel = None
        self.master = None
        self.points_by_address = {}
        self.restart_count = 0
        self.latest = {}
        self._restart_flagged = False
        # Touched only on opendnp3's thread, which runs task callbacks and Process in order.
        self.in_startup_poll = False
        self._deliver = None
        self._loop = None
        self._opened = None
        self._lost = None
        # opendnp3 keeps only references; keeping the Python objects alive is our job.
        self._callbacks = ()
        self._command_callbacks = []
        # Engineering value each written point should read back; None where a pulse leaves it unknown.
        self._expected = {}
        # Read-backs waiting for a static output status, by (point type, index).
        self._read_waiters = {}
        self._tls_directory = None

    @property
    def address(self):
        return f"{self.device.host}:{self.device.port}"

    async def connect(self):
        if self.channel is not None:
            return
        ip_address = await check_device_host(self.device)
        self._loop = asyncio.get_running_loop()
        self._opened = self._loop.create_future()
        self._lost = self._loop.create_future()
        listener = _ChannelListener(self)
        soe_handler = _SoeHandler(self)
        application = _MasterApplication(self)
        self._callbacks = (listener, soe_handler, application)

        retry = opendnp3.ChannelRetry(
            opendnp3.TimeDuration.Milliseconds(CHANNEL_RETRY_MIN_MS),
            opendnp3.TimeDuration.Milliseconds(max(CHANNEL_RETRY_MIN_MS, int(self.device.timeout * 1000))),
        )
        channel_id = f"{self.schema}-device-{self.device.pk}"
        # opendnp3 reconnects by itself on its channel retries, so it gets the checked address and not the name.
        # yadnp3 3.2's TLSConfig takes no server name, so TLS channels lose no host name check by this.
        endpoints = [opendnp3.IPEndpoint(ip_address, self.device.port)]
        if self.device.client_certificate_id is not None:
            tls_config = self._write_tls_files()
            logger.info("Schema %s device %s: opening DNP3 TLS channel to %s", self.schema, self.device.pk, self.address)
            self.channel = dnp3_manager().AddTLSClient(
                channel_id, opendnp3.LogLevels(0), retry, endpoints, "0.0.0.0", tls_config, listener
            )
        else:
            self.channel = dnp3_manager().AddTCPClient(
                channel_id, opendnp3.LogLevels(0), retry, endpoints, "0.0.0.0", listener
            )
        self.master = self.channel.AddMaster(channel_id, soe_handler, application, self._master_config())
        self.master.AddScan(_seconds(self.device.integrity_interval), _integrity_headers(), soe_handler)
        if self.device.event_poll_interval:
            self.master.AddClassScan(
                opendnp3.ClassField.AllEventClasses(), _seconds(self.device.event_poll_interval), soe_handler
            )
        self.master.Enable()
        try:
            async with asyncio.timeout(self.device.timeout):
                await asyncio.shield(self._opened)
        except TimeoutError:
            # A caller whose connect() failed does not call close(), so the channel and TLS files go here.
            await self.close()
            raise DeviceUnreachable(
                f"Cannot connect to DNP3 outstation {self.address} within {self.device.timeout} s."
            ) from None

    async def run(self, points, deliver):
        self._deliver = deliver
        self.points_by_address = {}
        for point in points:
            self.points_by_address.setdefault((point.dnp3_type, point.dnp3_index), []).append(point)
        await self.connect()
        reason = await self._lost
        raise DeviceUnreachable(f"Connection to DNP3 outstation {self.address} lost: {reason}")

    def missing_value_reason(self, point):
        return f"no {point.dnp3_type} {point.dnp3_index} received since connect"

    async def write(self, point, value):
        self.write_response = None
        command = build_command(point, value)
        if self.master is None:
            raise DeviceUnreachable(f"DNP3 outstation {self.address} is not connected; connect before writing.")
        select_first = point.dnp3_operate_mode == Dnp3OperateMode.SELECT_BEFORE_OPERATE
        operate = self.master.SelectAndOperate if select_first else self.master.DirectOperate
        mode = "select before operate" if select_first else "direct operate"
        target = f"{point.dnp3_type} {point.dnp3_index} of DNP3 outstation {self.address}"
        finished = self._loop.create_future()

        def on_result(result):
            # Runs on opendnp3's thread.
            outcome = (result.summary, [(item.index, item.state, item.status) for item in result.to_list()])
            _schedule(self, _settle, finished, outcome)

        self._command_callbacks.append(on_result)
        logger.info(
            "Schema %s device %s point %s: sending %s to %s by %s",
            self.schema, self.device.pk, point.pk, command.description, target, mode,
        )
        operate(command.command, point.dnp3_index, on_result)
        # Select before operate takes two round trips.
        wait_seconds = self.device.timeout * 2 + 1
        try:
            async with asyncio.timeout(wait_seconds):
                summary, results = await finished
        except TimeoutError:
            # The command stays queued or in flight in opendnp3, so it may still reach the outstation.
            raise UnconfirmedWrite(
                f"opendnp3 reported no result for {command.description} on {target} within {wait_seconds:g} s, "
                "so the outstation may have executed it. Read the output's value before writing again."
            ) from None
        finally:
            self._command_callbacks.remove(on_result)

        if not results:
            raise WriteRejected(f"The outstation returned no command status for {command.description} on {target}.")
        _, state, status = results[0]
        if _may_have_operated(select_first, summary, state):
            raise UnconfirmedWrite(
                f"{command.description} on {target} got no confirming response ({summary.name}, point state "
                f"{state.name}), so the outstation may have executed it. Read the output's value before writing again."
            )
        if summary != opendnp3.TaskCompletion.SUCCESS:
            message = f"{command.description} on {target} failed before the outstation operated it: {summary.name}"
            if summary in NO_RESPONSE_COMPLETIONS or summary == opendnp3.TaskCompletion.FAILURE_START_TIMEOUT:
                raise DeviceUnreachable(message)
            raise WriteRejected(message)
        self.write_response = status_text(status)
        if status != opendnp3.CommandStatus.SUCCESS or state != opendnp3.CommandPointState.SUCCESS:
            raise WriteRejected(
                f"The outstation rejected {command.description} on {target} with command status "
                f"{self.write_response} ({state.name.lower()})."
            )
        self._expected[point.pk] = command.expected
        return value if command.expected is None else command.expected

    def expected_read_back(self, point, written):
        return self._expected.get(point.pk, written)

    async def read(self, points):
        # On the gateway, self.latest may predate a write, so output status points are always scanned.
        if self.master is not None:
            await self._scan_output_status(points)
        return await super().read(points)

    async def _scan_output_status(self, points):
        """Read the static output status of ``points`` in flag-carrying variations and wait for the values."""
        waiting = []
        for point in points:
            variation = READ_BACK_VARIATIONS.get(point.dnp3_type)
            if variation is None:
                continue
            key = (point.dnp3_type, point.dnp3_index)
            known = self.points_by_address.setdefault(key, [])
            # On the gateway the point is already known, and a second entry would deliver each value twice.
            if all(other.pk != point.pk for other in known):
                known.append(point)
            self.latest.pop(point.sensor_id, None)
            if key not in self._read_waiters:
                self._read_waiters[key] = (f"Group{variation[0]}Var", self._loop.create_future())
                waiting.append(self._read_waiters[key][1])
                self.master.ScanRange(
                    opendnp3.GroupVariationID(*variation), point.dnp3_index, point.dnp3_index, self._callbacks[1]
                )
        try:
            async with asyncio.timeout(self.device.timeout):
                await asyncio.gather(*waiting)
        except TimeoutError:
            logger.warning(
                "Schema %s device %s: DNP3 outstation %s sent no output status within %s s",
                self.schema, self.device.pk, self.address, self.device.timeout,
            )
        finally:
            self._read_waiters.clear()

    async def close(self):
        if self.channel is None:
            return
        channel, self.channel, self.master = self.channel, None, None
        self.connected = False
        # Shutdown waits for opendnp3's threads, which may be waiting to call back into Python.
        await asyncio.to_thread(channel.Shutdown)
        if self._tls_directory is not None:
            shutil.rmtree(self._tls_directory, ignore_errors=True)
            self._tls_directory = None

    def _write_tls_files(self):
        """Write the trust list, client certificate and decrypted key to 0600 files and return the TLS config.

        Raise DeviceUnreachable when the device has no trusted certificates, so no server would be trusted.
        NOTE: opendnp3 reads the files again on every reconnect, so the decrypted key stays on disk
        until close(); the bindings take no in-memory certificates.
        """
        trusted = list(self.device.trusted_certificates.all())
        if not trusted:
            raise DeviceUnreachable(
                f"DNP3 TLS to {self.address} needs trusted certificates (the outstation's or its CA's); "
                "add them to the device."
            )
        certificate = self.device.client_certificate
        files = {
            "trusted.pem": "".join(item.certificate_pem for item in trusted),
            "client.pem": certificate.certificate_pem,
            "client.key": certificate.private_key_pem(),
        }
        # mkdtemp creates the directory with mode 0700.
        self._tls_directory = tempfile.mkdtemp(prefix="thermacore-dnp3-")
        try:
            for name, text in files.items():
                path = os.path.join(self._tls_directory, name)
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as file:
                    file.write(text)
        except OSError:
            shutil.rmtree(self._tls_directory, ignore_errors=True)
            self._tls_directory = None
            raise
        paths = {name: os.path.join(self._tls_directory, name) for name in files}
        return opendnp3.TLSConfig(paths["trusted.pem"], paths["client.pem"], paths["client.key"])

    def _master_config(self):
        config = opendnp3.MasterStackConfig()
        config.master.responseTimeout = _seconds(self.device.timeout)
        config.master.disableUnsolOnStartup = False
        config.master.timeSyncMode = opendnp3.TimeSyncMode.LAN if self.device.time_sync else TIME_SYNC_OFF
        config.link.LocalAddr = self.device.dnp3_master_address
        config.link.RemoteAddr = self.device.dnp3_outstation_address
        return config

    # The methods below run on the event loop, scheduled from opendnp3's threads.

    def _on_channel_state(self, state):
        if state == opendnp3.ChannelState.OPEN:
            self.connected = True
            self.was_connected = True
            logger.info("Schema %s device %s: DNP3 channel to %s open", self.schema, self.device.pk, self.address)
            _settle(self._opened, None)
        elif self.connected and state in (opendnp3.ChannelState.CLOSED, opendnp3.ChannelState.OPENING):
            self.connected = False
            _settle(self._lost, f"channel {state.name.lower()}")

    def _on_values(self, point_type, measurements, received_at, variation_name=""):
        samples = []
        for index, raw_value, flags, milliseconds, time_valid in measurements:
            waiter = self._read_waiters.get((point_type, index))
            for point in self.points_by_address.get((point_type, index), ()):
                when = measurement_time(milliseconds, time_valid, received_at)
                conversion = to_sample(point, point_type, raw_value, flags, when)
                if conversion.reason:
                    logger.warning(
                        "Schema %s device %s point %s (%s %s): %s",
                        self.schema, self.device.pk, point.pk, point_type, index, conversion.reason,
                    )
                samples.append(conversion.sample)
                self.latest[point.sensor_id] = conversion.sample
            if waiter is not None and variation_name.startswith(waiter[0]):
                _settle(waiter[1], None)
        if samples and self._deliver is not None:
            self._deliver(samples)

    def _on_iin(self, device_restart, need_time):
        if device_restart and not self._restart_flagged:
            self.restart_count += 1
            logger.warning(
                "Schema %s device %s: DNP3 outstation %s restarted (IIN1.7); clearing the bit and polling integrity",
                self.schema, self.device.pk, self.address,
            )
        self._restart_flagged = device_restart
        if need_time and not self.device.time_sync:
            logger.info(
                "Schema %s device %s: outstation %s asks for time (IIN1.4), but time sync is off for this device",
                self.schema, self.device.pk, self.address,
            )

    def _on_task(self, task_type, result):
        logger.debug("Schema %s device %s: DNP3 task %s %s", self.schema, self.device.pk, task_type, result)
        if task_type == "STARTUP_INTEGRITY_POLL" and result == "SUCCESS" and self.master is not None:
            # NOTE: an outstation without float variations returns no analogs to this poll, so until
            # it sends events its analog points keep their last stored values.
            self.master.Scan(_integrity_headers(), self._callbacks[1])


class _ChannelListener(opendnp3.IChannelListener):
    def __init__(self, driver):
        super().__init__()
        self.driver = driver

    def OnStateChange(self, state):
        _schedule(self.driver, self.driver._on_channel_state, state)


class _SoeHandler(opendnp3.ISOEHandler):
    def __init__(self, driver):
        super().__init__()
        self.driver = driver

    def BeginFragment(self, info):
        pass

    def EndFragment(self, info):
        pass

    def Process(self, info, values):
        if self.driver.in_startup_poll and info.gv.name in INTEGER_ANALOG_VARIATIONS:
            return
        received_at = datetime.now(timezone.utc)
        measurements = []
        point_type = None
        for item in values:
            point_type = POINT_TYPES.get(type(item).__name__)
            if point_type is None:
                # Octet strings, time-and-interval and security statistics map to no sensor.
                return
            value = item.value
            measurements.append((
                item.index, value.value, value.flags.value, value.time.value,
                value.time.quality != opendnp3.TimestampQuality.INVALID,
            ))
        if measurements:
            _schedule(self.driver, self.driver._on_values, point_type, measurements, received_at, info.gv.name)

    def OnDeviceAttribute(self, info, set_, variation, value):
        pass


class _MasterApplication(opendnp3.IMasterApplication):
    def __init__(self, driver):
        super().__init__()
        self.driver = driver

    def OnReceiveIIN(self, iin):
        restart = iin.IsSet(opendnp3.IINBit.DEVICE_RESTART)
        need_time = iin.IsSet(opendnp3.IINBit.NEED_TIME)
        _schedule(self.driver, self.driver._on_iin, restart, need_time)

    def OnTaskStart(self, task_type, task_id):
        if task_type == opendnp3.MasterTaskType.STARTUP_INTEGRITY_POLL:
            self.driver.in_startup_poll = True
        _schedule(self.driver, self.driver._on_task, task_type.name, "started")

    def OnTaskComplete(self, info):
        if info.type == opendnp3.MasterTaskType.STARTUP_INTEGRITY_POLL:
            self.driver.in_startup_poll = False
        _schedule(self.driver, self.driver._on_task, info.type.name, info.result.name)

    def OnOpen(self):
        pass

    def OnClose(self):
        pass

    def AssignClassDuringStartup(self):
        return False


def _may_have_operated(select_first, summary, state):
    """Return whether a command may have been operated although no response confirmed it.

    opendnp3 (yadnp3 3.2, CommandTask and TypedCommandHeader) sets a point's state to SELECT_SUCCESS
    when the select response matched and sends the operate right after it, to SUCCESS or OPERATE_FAIL
    when an operate response arrived, and leaves it at INIT until then. A select that timed out or failed
    operates nothing, because an outstation executes only a selected command. opendnp3 cannot tell a
    command that was still queued when the channel closed (FAILURE_NO_COMMS) from one in flight, nor an
    operate lost after SELECT_SUCCESS from one sent, so both count as possibly operated.
    """
    if summary == opendnp3.TaskCompletion.SUCCESS:
        # A response arrived, but without a matching echo of the command (OPERATE_FAIL, or INIT for a direct operate).
        if state == opendnp3.CommandPointState.OPERATE_FAIL:
            return True
        return not select_first and state == opendnp3.CommandPointState.INIT
    if summary not in NO_RESPONSE_COMPLETIONS:
        return False
    if select_first:
        return state in OPERATE_SENT_STATES
    return True


def _integrity_headers():
    return [opendnp3.Header.AllObjects(group, variation) for group, variation in INTEGRITY_HEADERS]


def _schedule(driver, callback, *args):
    """Run ``callback`` on the driver's event loop; drop it when the loop is already closed."""
    try:
        driver._loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        logger.debug("Device %s: DNP3 callback %s after the event loop closed", driver.device.pk, callback.__name__)


def _seconds(value):
    return opendnp3.TimeDuration.Milliseconds(int(value * 1000))


def _settle(future, reason):
    if future is not None and not future.done():
        future.set_result(reason)
