"""The error hierarchy: every error this project raises derives from BridgeError.

Errors double-inherit from the matching built-in (ValueError, TimeoutError, ConnectionError) so that
callers who catch the built-in keep working, as msgpack and Gymnasium do.
"""
from typing import Optional


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
