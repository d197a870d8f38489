"""A cancelled consumer ends at once, even when its channel layer receive swallows the first cancellation.

On Python 3.11 a channels_redis receive cancelled while redis-py sends a
command through asyncio.wait_for may go on polling Redis. Channels awaited it
once after cancelling, so a refused socket's consumer, and the test event
loop shutting down, could wait for it without end.
"""

import asyncio

import pytest
from channels.layers import get_channel_layer

from apps.dashboards.dispatch import await_many_dispatch
from tests.conftest import SOCKET_TIMEOUT
from tests.test_isolation_matrix import BETA_HOST, _socket, alpha_websocket_credentials  # noqa: F401
from thermacore.aio import cancel_and_wait

pytestmark = pytest.mark.asyncio

# A cancelled consumer must end within this many seconds.
END_TIMEOUT = 1.0


async def test_cancel_and_wait_recancels_task():
    cancellations = []

    async def swallow_first_cancel():
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancellations.append(1)
                if len(cancellations) > 1:
                    raise

    task = asyncio.ensure_future(swallow_first_cancel())
    await asyncio.sleep(0)

    waiter = asyncio.ensure_future(cancel_and_wait([task], "test"))
    done, _pending = await asyncio.wait({waiter}, timeout=END_TIMEOUT)

    assert waiter in done
    assert task.cancelled()
    assert len(cancellations) == 2


async def test_cancel_and_wait_raises_caller_cancel():
    started = asyncio.Event()

    async def slow_to_end():
        try:
            started.set()
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)
            raise

    task = asyncio.ensure_future(slow_to_end())
    await started.wait()
    caller = asyncio.ensure_future(cancel_and_wait([task], "test"))
    await asyncio.sleep(0.05)
    caller.cancel()

    with pytest.raises(asyncio.CancelledError):
        await caller
    assert task.cancelled()


@pytest.mark.parametrize("loop_turns", range(0, 30))
async def test_dispatch_cancel_ends_redis_receive(loop_turns):
    # Cancelling after a varying number of event loop turns hits the receive while it connects,
    # sends EVAL and sends BZPOPMIN, which are the moments a cancellation can be lost.
    layer = get_channel_layer()
    channel = await layer.new_channel()
    dispatched = []

    async def dispatch(message):
        dispatched.append(message)

    dispatcher = asyncio.ensure_future(
        await_many_dispatch([lambda: layer.receive(channel)], dispatch, "test")
    )
    for _ in range(loop_turns):
        await asyncio.sleep(0)
    dispatcher.cancel()

    done, _pending = await asyncio.wait({dispatcher}, timeout=END_TIMEOUT)

    assert dispatcher in done
    assert dispatcher.cancelled()
    assert dispatched == []


@pytest.mark.parametrize("repeat", range(5))
async def test_refused_consumer_cancel_ends(alpha_websocket_credentials, django_db_blocker, repeat):
    with django_db_blocker.unblock():
        communicator = _socket("/ws/live/", BETA_HOST, token=alpha_websocket_credentials["token"])
        connected, _subprotocol = await communicator.connect(timeout=SOCKET_TIMEOUT)
        message = await communicator.receive_output(timeout=SOCKET_TIMEOUT)
    application = communicator.future

    application.cancel()
    done, _pending = await asyncio.wait({application}, timeout=END_TIMEOUT)

    assert connected
    assert message == {"type": "websocket.close", "code": 4401, "reason": message.get("reason")}
    assert application in done
    assert application.cancelled()
