"""The typed errors of the 0.8.4 backend, rooted in bridge.errors.BridgeError."""
from bridge.errors import BridgeError, BridgeTimeoutError, ProtocolError


class LegacyError(BridgeError):
    """Something went wrong talking to a CARLA 0.8.4 server."""


class LegacyConnectionError(ConnectionError, LegacyError):
    """The 0.8.4 server refused or dropped a connection (not running, crashed, or restarted)."""


class LegacyTimeoutError(BridgeTimeoutError, LegacyError):
    """The 0.8.4 server sent nothing within the budget (stalled, overloaded, or frozen)."""


class LegacyProtocolError(ProtocolError, LegacyError):
    """A message that does not parse, a frame without measurements, an unknown sensor id."""


class EpisodeRefusedError(LegacyError):
    """The server answered ``EpisodeReady{ready=false}`` or could not create a requested sensor."""


class EpisodeLostError(LegacyConnectionError):
    """The server closed the control/stream connection mid-episode.

    A real 0.8.4 server does this when no control arrived within its ``ServerTimeOut`` (10 s by
    default); the episode is over and the next ``reset`` starts a new one on the same world
    connection.
    """


class LegacyClientUnavailableError(LegacyError):
    """``--legacy-client pythonclient`` was asked for but ``carla.client`` cannot be imported."""
