"""Consumer dispatch loop that ends its receive tasks even when one of them swallows a cancellation.

Channels 4.3 cancels the receive tasks of a consumer that stops and awaits
each of them once. A channels_redis receive whose cancellation was lost
(thermacore.aio explains how that happens on Python 3.11) goes on polling
Redis with BZPOPMIN, and the consumer that awaits it, or an event loop that
is shutting down, would wait without end.
"""

import asyncio
import functools

from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer

from thermacore.aio import cancel_and_wait


async def await_many_dispatch(consumer_callables, dispatch, owner):
    """Pass the result of each callable to ``dispatch`` as it arrives, like channels.utils.await_many_dispatch.

    Unlike the Channels version, it returns only after every task it started has ended.
    """
    tasks = [asyncio.ensure_future(consumer_callable()) for consumer_callable in consumer_callables]
    try:
        while True:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for index, task in enumerate(tasks):
                if task.done():
                    result = task.result()
                    await dispatch(result)
                    tasks[index] = asyncio.ensure_future(consumer_callables[index]())
    finally:
        await cancel_and_wait(tasks, owner)


class CancelSafeConsumerMixin:
    """Run an asynchronous consumer on the dispatch loop above, so that stopping or cancelling it leaves no task behind.

    ``__call__`` repeats AsyncConsumer.__call__ of Channels 4.3 except for the dispatch loop.
    """

    async def __call__(self, scope, receive, send):
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        callables = [receive]
        owner = type(self).__name__
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            callables.append(self.channel_receive)
            owner = f"{owner} {self.channel_name}"
        self.base_send = send
        try:
            await await_many_dispatch(callables, self.dispatch, owner)
        except StopConsumer:
            pass

