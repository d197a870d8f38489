"""Gap tracking of the ``group_seq`` numbers that senders put on live group messages (apps.telemetry.live_sequence)."""

# Messages of a group that may arrive past a missing number before the number counts as lost at once.
# It bounds the set of those numbers during a flood. Concurrent senders reorder only the messages they
# have in flight together, which this is assumed to exceed (an estimate, not measured).
MAX_AHEAD = 1000


class GroupSeqGaps:
    """The ``group_seq`` numbers one consumer received, and those it is still missing, per group.

    Senders of one group run concurrently, and channels_redis 4.3 orders a
    channel's messages by the sender's clock, so a number may arrive after a
    higher one. A missing number is therefore lost only once it stops the
    group's progress from one ``check`` to the next, or once MAX_AHEAD
    higher numbers of the group arrived.
    """

    def __init__(self, baselines):
        # baselines: {group: the last number reserved before the consumer joined}. Every higher
        # number was reserved after the join, so the channel layer must deliver it to this consumer.
        self.next_seq = {group: last + 1 for group, last in baselines.items()}
        self.ahead = {}
        self.stuck_at = {}
        self.received_since_check = set()

    def receive(self, group, seq):
        """Record ``seq`` of ``group``; return True when more than MAX_AHEAD numbers arrived past a missing one."""
        self.received_since_check.add(group)
        expected = self.next_seq.get(group)
        if expected is None:
            # No baseline (reading the counters at join failed), so the first message sets it.
            self.next_seq[group] = seq + 1
            return False
        ahead = self.ahead.setdefault(group, set())
        if seq < expected or seq in ahead:
            # Reserved before the join, or received twice.
            return False
        if seq > expected:
            ahead.add(seq)
            return len(ahead) > MAX_AHEAD
        expected += 1
        while expected in ahead:
            ahead.remove(expected)
            expected += 1
        self.next_seq[group] = expected
        return False

    def missing(self, group, reserved=0):
        """Return how many numbers of ``group`` up to ``reserved`` (or the highest received) have not arrived."""
        ahead = self.ahead.get(group, set())
        highest = max(reserved, max(ahead, default=0))
        return max(0, highest - self.next_seq[group] + 1 - len(ahead))

    def take_groups_to_check(self):
        """Return the groups that received messages since the last call or still miss numbers, and reset the former."""
        groups = sorted(self.received_since_check | set(self.stuck_at))
        self.received_since_check = set()
        return groups

    def has_unchecked(self):
        return bool(self.received_since_check)

    def check(self, reserved):
        """Compare with the counters ``reserved`` ({group: last number reserved}); return {group: lost count}.

        A group loses its missing numbers when its lowest missing number is
        the same as at the previous check. Call it at intervals that are
        longer than the time a sender takes to send what it reserved.
        """
        lost = {}
        stuck_at = {}
        for group, last in reserved.items():
            if group not in self.next_seq:
                continue
            missing = self.missing(group, last)
            if not missing:
                continue
            if self.stuck_at.get(group) == self.next_seq[group]:
                lost[group] = missing
            stuck_at[group] = self.next_seq[group]
        self.stuck_at = stuck_at
        return lost

    def has_missing(self):
        return bool(self.stuck_at)
