"""The error hierarchy: every error this project raises derives from BridgeError.

Errors double-inherit from the matching built-in (ValueError, TimeoutError, ConnectionError) so that
callers who catch the built-in keep working, as msgpack and Gymnasium do.
"""
from typing import Any, Optional

#: the longest quote of peer-supplied data an error message carries (error replies and log lines
#: stay small whatever a peer sends: no amplification).
QUOTE_CHARS = 200


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return "{}... ({} more characters)".format(text[:max(limit - 40, 0)], len(text) - limit + 40)


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """A bounded ``repr`` of a value a peer sent, for error messages.

    Containers are summarised before repr() is called, so quoting a 20-million-element list costs
    nothing (repr of the whole list would build a huge string first).
    """
    if isinstance(value, (list, tuple, dict, set)) and len(value) > 16:
        kind = type(value).__name__
        head = list(value)[:8] if not isinstance(value, dict) else list(value.items())[:8]
        return truncate("<{} of {} items, starting {!r}>".format(kind, len(value), head), limit)
    if isinstance(value, (bytes, bytearray, memoryview, str)) and len(value) > limit:
        return truncate(repr(value[:limit]), limit) + " ({} long)".format(len(value))
    return truncate(repr(value), limit)


class BridgeError(Exception):
    """Root of every error raised by carla-zmq-bridge."""


class ProtocolError(ValueError, BridgeError):
    """A message broke the protocol: garbage bytes, truncated frames, unknown command, bad field."""


class MessageTooLargeError(ProtocolError):
    """A message exceeded the configured maximum size."""


class SpecError(ProtocolError):
    """A value does not match its field spec (wrong shape, dtype, NaN, out of bounds)."""


class VersionMismatchError(BridgeError):
    """The two sides speak protocol versions with different major numbers."""

    def __init__(self, local: str, remote: str, message: Optional[str] = None) -> None:
        self.local = local
        self.remote = remote
        super().__init__(message or (
            "protocol version mismatch: this side speaks {} but the peer speaks {}; install the "
            "same carla-zmq-bridge major version on both sides".format(local, remote)))

    def __reduce__(self):
        return (type(self), (self.local, self.remote, str(self)))


class BridgeTimeoutError(TimeoutError, BridgeError):
    """No reply arrived within the timeout."""


class ActorLostError(BridgeError):
    """The world lost an actor the episode needs (e.g. another CARLA client destroyed the ego).

    The session survives; the episode does not: the next ``reset`` rebuilds the actors.
    """


class StepBudgetError(ValueError, BridgeError):
    """The sim side's announced step budget does not fit this client's request timeout."""


class PeerDisconnectedError(ConnectionError, BridgeError):
    """The peer's connection dropped while we waited for its reply (it probably crashed)."""


class SessionError(BridgeError):
    """The request needs a session that does not exist (no hello yet, or another trainer took over)."""


class SessionBusyError(SessionError):
    """Another trainer owns the live session on that sim side: a configuration problem (two trainers
    pointed at one carla_client), not something a reconnect can fix."""


class ConfigError(ValueError, BridgeError):
    """A configuration file, option or ``key=value`` override is malformed or has a wrong value."""


class UnknownKeyError(ConfigError):
    """A configuration file or override names a key that does not exist (a typo, usually)."""


class SnapshotError(BridgeError):
    """A snapshot cannot be taken or restored: an unknown or dropped token, or nothing to save yet."""


class SnapshotUnsupportedError(SnapshotError):
    """The world cannot save its full state (CARLA 0.9 cannot), so it refuses instead of
    approximating. Announced in advance by hello's ``capabilities``."""


class RemoteError(BridgeError):
    """An error raised on the far side, carried back with its type name, message and traceback.

    Picklable, so it crosses SubprocVecEnv's pipes intact.
    """

    def __init__(self, remote_type: str, message: str, remote_traceback: str = "") -> None:
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback
        # Exception.__init__ directly: the mixed-in classes (VersionMismatchError...) take other args.
        Exception.__init__(self, "{} raised on the sim side: {}".format(remote_type, message))

    def __reduce__(self):
        return (type(self), (self.remote_type, self.remote_message, self.remote_traceback))


class RemoteProtocolError(RemoteError, ProtocolError):
    """The far side rejected our request as malformed (a ProtocolError over there)."""


class RemoteSpecError(RemoteError, SpecError):
    """The far side rejected a value that breaks its spec (bad action: NaN, out of range...)."""


class RemoteSessionError(RemoteError, SessionError):
    """The far side has no session for us: send hello again."""


class RemoteSessionBusyError(RemoteError, SessionBusyError):
    """The far side refused our hello: another trainer's session is live there."""


class RemoteTimeoutError(RemoteError, BridgeTimeoutError):
    """The sim side ran out of its step budget (a CARLA tick or a sensor's data was late).

    The message names the sensor and the frame. The session survives: end the episode and reset.
    """


class RemoteActorLostError(RemoteError, ActorLostError):
    """The sim side lost an actor the episode needs: end the episode; the next reset rebuilds it."""


class RemoteVersionError(RemoteError, VersionMismatchError):
    """The far side refused our protocol version."""

    def __init__(self, remote_type: str, message: str, remote_traceback: str = "") -> None:
        RemoteError.__init__(self, remote_type, message, remote_traceback)
        self.local = self.remote = ""  # both versions are named in the server's message

    def __reduce__(self):
        return RemoteError.__reduce__(self)


class RemoteSnapshotError(RemoteError, SnapshotError):
    """The far side could not take or restore a snapshot (e.g. an unknown or dropped token)."""


class RemoteSnapshotUnsupportedError(RemoteError, SnapshotUnsupportedError):
    """The far side's world cannot snapshot."""


#: wire error codes (docs/PROTOCOL.md) to the local class raised for them.
REMOTE_ERROR_CLASSES = {
    "ProtocolError": RemoteProtocolError,
    "MessageTooLargeError": RemoteProtocolError,
    "SpecError": RemoteSpecError,
    "SessionError": RemoteSessionError,
    "SessionBusyError": RemoteSessionBusyError,
    "VersionMismatchError": RemoteVersionError,
    "BridgeTimeoutError": RemoteTimeoutError,
    "ActorLostError": RemoteActorLostError,
    "SnapshotError": RemoteSnapshotError,
    "SnapshotUnsupportedError": RemoteSnapshotUnsupportedError,
}

#: remote failures that end the episode but not the session: the env truncates and resets.
EPISODE_ENDING_REMOTE_ERRORS = (RemoteTimeoutError, RemoteActorLostError)


def wire_code(error: BaseException) -> str:
    """The wire error code for a local exception: the nearest class named in REMOTE_ERROR_CLASSES."""
    for cls in type(error).__mro__:
        if cls.__name__ in REMOTE_ERROR_CLASSES:
            return cls.__name__
    return type(error).__name__


def remote_error(code: str, message: str, remote_traceback: str = "") -> RemoteError:
    """Builds the typed local exception for an error reply."""
    cls = REMOTE_ERROR_CLASSES.get(code, RemoteError)
    return cls(code, message, remote_traceback)
