"""Fleet events that only the fleet can send: each one carries a MAC under the store key.

An event (``ready <entry>``: a token was written; ``revoke <origin> <agent>
<fingerprint>``: drop the agent's tokens) makes every listening process act,
so anyone able to publish on the channel could otherwise trigger a refetch
storm against AuthSec or wake lease waiters early. A message is::

    authsec1 <key id> <store time, ms> <nonce> <kind> <args...> <mac>

The MAC is HMAC-SHA256, under a key derived from the store key, over the
channel name and everything before it: a message captured from another
deployment (another channel) or forged without the key does not verify; one
replayed later than :data:`EVENT_WINDOW` seconds, or twice, is dropped. Every
key of the rotation list verifies, the first one signs. With store encryption
deliberately off there is no key, and events travel unauthenticated (``-``
in place of key id and MAC), as the entries do.

Whatever arrives, :meth:`EventSigner.open` returns an :class:`Event` or raises
:class:`EventRejected`; it never raises anything else, so no payload can stop
a listener.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["EVENT_WINDOW", "MAX_EVENT_BYTES", "Event", "EventRejected", "EventSigner"]

EVENT_WINDOW = 60.0
"""Seconds an event stays believable (store time); older or later ones are replays."""
MAX_EVENT_BYTES = 512
"""No event the fleet sends is longer; a longer one is not read at all."""

_VERSION = "authsec1"
_KINDS = {"ready": 1, "revoke": 3}  # kind -> how many arguments it carries
_MAC_DOMAIN = b"authsec-crewai/events/v1"
_NONCES_KEPT = 4096


class EventRejected(Exception):
    """A message that is not a fleet event of this deployment; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    args: tuple[str, ...]


class EventSigner:
    """Signs and checks events for one channel under the store keys (first signs)."""

    def __init__(self, keys: Sequence[bytes], channel: str) -> None:
        self._channel = channel.encode()
        self._keys = {
            hashlib.sha256(key).hexdigest()[:8]: hmac.new(key, _MAC_DOMAIN, "sha256").digest()
            for key in keys
        }
        self._signing = next(iter(self._keys.items()), None)
        self._nonces: OrderedDict[str, float] = OrderedDict()

    def seal(self, kind: str, args: Sequence[str], now: float) -> str:
        body = " ".join([kind, *args])
        head = f"{_VERSION} {self._signing[0] if self._signing else '-'} {int(now * 1000)}"
        text = f"{head} {secrets.token_hex(8)} {body}"
        if self._signing is None:
            return f"{text} -"
        return f"{text} {self._mac(self._signing[1], text)}"

    def open(self, message: object, now: float) -> Event:
        """The event ``message`` carries, if it is authentic, fresh and well formed."""
        try:
            return self._open(message, now)
        except EventRejected:
            raise
        except Exception as exc:  # no payload may stop a listener
            raise EventRejected(f"unreadable ({type(exc).__name__})") from None

    def _open(self, message: object, now: float) -> Event:
        if isinstance(message, bytes):
            if len(message) > MAX_EVENT_BYTES:
                raise EventRejected("oversized")
            message = message.decode("ascii")
        if not isinstance(message, str):
            raise EventRejected("not text")
        if len(message) > MAX_EVENT_BYTES or not message.isascii():
            raise EventRejected("oversized" if len(message) > MAX_EVENT_BYTES else "not ascii")
        parts = message.split(" ")
        if len(parts) < 6 or parts[0] != _VERSION:
            raise EventRejected("malformed")
        key_id, stamp, nonce, kind, args, mac = (
            parts[1],
            parts[2],
            parts[3],
            parts[4],
            tuple(parts[5:-1]),
            parts[-1],
        )
        if _KINDS.get(kind) != len(args) or not all(args) or not nonce:
            raise EventRejected("malformed")
        text = message[: len(message) - len(mac) - 1]
        if self._keys:
            key = self._keys.get(key_id)
            if key is None:
                raise EventRejected("key mismatch" if key_id != "-" else "unauthenticated")
            if not hmac.compare_digest(self._mac(key, text), mac):
                raise EventRejected("bad mac")
        elif key_id != "-" or mac != "-":
            raise EventRejected("key mismatch")  # signed, but this process has no key
        sent = int(stamp) / 1000
        if abs(now - sent) > EVENT_WINDOW:
            raise EventRejected("stale")
        if nonce in self._nonces:
            raise EventRejected("replayed")
        self._remember(nonce, now)
        return Event(kind, args)

    def _remember(self, nonce: str, now: float) -> None:
        self._nonces[nonce] = now
        while self._nonces and (
            len(self._nonces) > _NONCES_KEPT
            or next(iter(self._nonces.values())) < now - 2 * EVENT_WINDOW
        ):
            self._nonces.popitem(last=False)

    def _mac(self, key: bytes, text: str) -> str:
        return hmac.new(key, self._channel + b"\0" + text.encode(), "sha256").hexdigest()
