"""Stop asyncio tasks reliably on Python 3.11, where a single cancellation can be lost.

Python 3.11's asyncio.wait_for returns the inner result instead of raising
CancelledError when the cancellation arrives after the inner future finished
but before wait_for resumed (3.12 rebuilt wait_for on asyncio.timeout).
redis-py 8.2 sends each command through wait_for when a socket timeout is set,
so a task that is cancelled while it talks to Redis may go on running. Code
that stops tasks uses ``cancel_and_wait``, and our own code uses
``asyncio.timeout`` instead of wait_for (ruff rule TID251 in pyproject.toml).
"""

import asyncio
import logging

logger = logging.getLogger(__name__)

# Seconds to wait for a cancelled task to end before cancelling it again.
RECANCEL_SECONDS = 0.1


async def cancel_and_wait(tasks, owner, recancel_seconds=RECANCEL_SECONDS):
    """Cancel ``tasks`` and wait until all have ended, cancelling again any still running after ``recancel_seconds``.

    ``owner`` names the caller in log lines. A task whose cleanup awaits, such as closing a connection,
    needs ``recancel_seconds`` longer than that cleanup, because a second cancellation interrupts it.
    A cancellation of the caller while it waits is raised after the tasks have ended, so none is left running.
    """
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    caller_cancelled = False
    retries = 0
    while pending:
        try:
            _done, pending = await asyncio.wait(pending, timeout=recancel_seconds)
        except asyncio.CancelledError:
            caller_cancelled = True
            continue
        for task in pending:
            retries += 1
            if retries == 1 or retries % 100 == 0:
                logger.warning("%s: task %s is still running after %d cancellations; cancelling it again",
                               owner, task.get_name(), retries)
            task.cancel()
    if caller_cancelled:
        raise asyncio.CancelledError()
