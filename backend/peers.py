"""What the front door knows about each connected client: liveness and the bytes it is sent.

ZMTP heartbeats are off (libzmq aborts the whole process when a heartbeat
times out on a peer that stopped reading: zeromq/libzmq #3937, #4364, #4767),
so liveness is the protocol's own. A peer is *heard* whenever it sends
anything (a request, or the ``ping`` a client sends when it has been quiet for
``protocol.PING_EVERY_S``). The server never waits for a peer; it drops one,
with a reason it logs once, when

* a send to it finds its queue full (it stopped reading: the ROUTER's
  high-water mark is reached),
* it has been sent more than ``budget_bytes`` since it was last heard (a
  client that reads also pings, fetches or asks).

A peer not heard for ``silence_s`` (the old heartbeat timeout) that follows
no job is forgotten; one that follows jobs keeps them (a client may only
listen), bounded by its queue and its budget.

Dropping forgets its subscriptions and unread chunks; a client that is still
there learns from the next ``pong`` (``following``) that it must subscribe
again, and resumes from its last sequence number, so nothing is lost.
The table is bounded: a peer that never sends is never in it, and a silent
one leaves it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Peer:
    heard: float
    sent_bytes: int = 0
    """Bytes sent to it since it was last heard."""
    unread: set[str] = field(default_factory=set)
    """Nonces of result chunks sent to it and not acknowledged (its chunk credit)."""


class Peers:
    def __init__(self, budget_bytes: int, silence_s: float, max_logged: int = 100) -> None:
        self.budget_bytes = budget_bytes
        self.silence_s = silence_s
        self._peers: dict[bytes, Peer] = {}
        self._logged = 0
        self._max_logged = max_logged
        self.dropped = 0
        """Peers dropped so far (the log says why for the first ``max_logged``)."""

    def __len__(self) -> int:
        return len(self._peers)

    def heard(self, identity: bytes) -> Peer:
        """It sent something: it is alive and (if it is a client of ours) reading."""
        peer = self._peers.get(identity)
        if peer is None:
            peer = self._peers[identity] = Peer(time.monotonic())
        else:
            peer.heard, peer.sent_bytes = time.monotonic(), 0
        return peer

    def get(self, identity: bytes) -> Peer | None:
        return self._peers.get(identity)

    def sent(self, identity: bytes, nbytes: int) -> bool:
        """Count a send; False when the peer is now over its budget (the caller drops it)."""
        peer = self._peers.get(identity)
        if peer is None:  # a subscriber not heard since the server started: it gets one budget
            peer = self._peers[identity] = Peer(time.monotonic())
        peer.sent_bytes += nbytes
        return peer.sent_bytes <= self.budget_bytes

    def drop(self, identity: bytes, reason: str) -> None:
        self._peers.pop(identity, None)
        self.dropped += 1
        if self._logged < self._max_logged:  # bounded: a flood of bad peers cannot flood the log
            self._logged += 1
            log.warning("dropped a client (%s): %s", identity.hex()[:16], reason)

    def forget(self, identity: bytes) -> None:
        """It is gone (EHOSTUNREACH): nothing to say."""
        self._peers.pop(identity, None)

    def silent(self) -> list[bytes]:
        """Peers not heard from for ``silence_s``."""
        cutoff = time.monotonic() - self.silence_s
        return [i for i, p in self._peers.items() if p.heard < cutoff]
