"""Replay protection: every (sender, epoch, seq) is accepted once, at any age.

Each sender incarnation picks a random ``epoch`` and numbers its messages
1, 2, 3, ... inside the authenticated envelope. A receiver keeps, per
(sender, epoch), the highest sequence number it accepted (the high-water
mark) and a bitmap of the ``window`` numbers below it, so a message that
arrives out of order within the window (a resend after a nack or a
reconnect) is accepted once, and any copy of an accepted one is refused
however late it comes. Below the window everything is refused. Memory is
bounded: at most ``max_senders`` (sender, epoch) pairs, the least recently
heard forgotten first.

A receiver that restarts has forgotten every epoch; the codec's age limit
(``max_age``) bounds what an attacker can replay to it. Pure logic: no I/O,
no threads (the caller serialises calls; the receive path runs on one I/O
thread).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from miros_rabbitmq.wire.names import REPLAY_SENDERS, REPLAY_WINDOW, SKEW_LOG_SEC

__all__ = ["ReplayGuard"]

logger = logging.getLogger(__name__)


@dataclass
class _Track:
    high: int = 0  # highest accepted seq
    mask: int = 0  # bit i set: seq (high - i) accepted


class ReplayGuard:
    """Remembers what was accepted from each (sender, epoch)."""

    def __init__(self, *, window: int = REPLAY_WINDOW, max_senders: int = REPLAY_SENDERS,
                 owner: str = "") -> None:
        if window < 1 or max_senders < 1:
            raise ValueError("window and max_senders must be positive")
        self.window = window
        self.max_senders = max_senders
        self.owner = owner
        self._tracks: OrderedDict[tuple[str, int], _Track] = OrderedDict()
        self._skew_logged: set[str] = set()
        self._full = (1 << window) - 1

    def __len__(self) -> int:
        return len(self._tracks)

    def seen(self, sender: str, epoch: int, seq: int) -> bool:
        """True when this message must be refused: accepted before, or below the window."""
        track = self._tracks.get((sender, epoch))
        if track is None or seq > track.high:
            return False
        offset = track.high - seq
        if offset >= self.window:
            return True
        return bool(track.mask >> offset & 1)

    def accept(self, sender: str, epoch: int, seq: int) -> None:
        """Record a delivered message (call after :meth:`seen` said False)."""
        key = (sender, epoch)
        track = self._tracks.get(key)
        if track is None:
            track = self._tracks[key] = _Track()
            if len(self._tracks) > self.max_senders:
                self._tracks.popitem(last=False)
        else:
            self._tracks.move_to_end(key)
        if seq > track.high:
            track.mask = ((track.mask << (seq - track.high)) | 1) & self._full
            track.high = seq
        else:
            offset = track.high - seq
            if offset < self.window:
                track.mask |= 1 << offset

    def note_clock(self, sender: str, sent_at: float, now: float) -> float:
        """Log, once per sender, a clock difference (or transit delay) above a few seconds.

        Returns the measured difference (positive: the sender's clock is ahead).
        """
        skew = sent_at - now
        if abs(skew) > SKEW_LOG_SEC and sender not in self._skew_logged:
            if len(self._skew_logged) >= self.max_senders:
                self._skew_logged.clear()
            self._skew_logged.add(sender)
            logger.warning(
                "%s: messages from %s are stamped %+.1f s from our clock (clock skew, or "
                "a delay in transit); delivered anyway, logged once per sender",
                self.owner or "receiver", sender, skew)
        return skew
