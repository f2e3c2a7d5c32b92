"""A session's snapshot tokens: opaque strings naming saved world states, bounded in number.

The states stay on the sim side; the trainer only ever holds tokens. A store belongs to one session
and is dropped with it, so a token never outlives the session that took it. When a new snapshot would
exceed the capacity, the oldest one is dropped (first in, first out; restoring a token does not make
it younger), which bounds memory whatever the trainer asks for.
"""
import secrets
from collections import OrderedDict
from typing import Any

from bridge.errors import ProtocolError, SnapshotError


class SnapshotStore(object):
    """Maps tokens to saved states; keeps the newest ``capacity`` of them.

    Args:
        capacity: how many snapshots to keep (at least 1).
        where: names the world in error messages.

    Raises:
        ValueError: capacity below 1.
    """

    def __init__(self, capacity: int, where: str = "this session") -> None:
        if int(capacity) < 1:
            raise ValueError("a snapshot store needs a capacity of at least 1, got {!r}".format(
                capacity))
        self.capacity = int(capacity)
        self.where = where
        self._states = OrderedDict()  # type: OrderedDict
        self.dropped = 0

    def add(self, state: Any) -> str:
        """Keeps ``state`` and returns its new token (16 lowercase hex digits)."""
        token = secrets.token_hex(8)
        self._states[token] = state
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)
            self.dropped += 1
        return token

    def get(self, token: Any) -> Any:
        """The state saved under ``token``.

        Raises:
            ProtocolError: ``token`` is not a string.
            SnapshotError: no such token here (never taken, dropped as the oldest, or taken in
                another session).
        """
        if not isinstance(token, str):
            raise ProtocolError("a snapshot token must be a string, got {!r}".format(token))
        try:
            return self._states[token]
        except KeyError:
            raise SnapshotError(
                "unknown snapshot token {!r} in {}: tokens die with the session that took them, "
                "and only the newest {} are kept ({} dropped so far)".format(
                    token, self.where, self.capacity, self.dropped)) from None

    def clear(self) -> None:
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, token: Any) -> bool:
        return token in self._states
