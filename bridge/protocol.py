"""Protocol constants: version, commands, default ports and limits, each defined once.

Revision history of PROTOCOL_VERSION (major.minor; a major mismatch is an error, a minor one a warning):
    1.0  first release: hello/reset/step/close/ping/heartbeat, out-of-band array frames, /dev/shm path.
    1.1  snapshot/restore commands; hello's reply announces ``capabilities`` (an older peer ignores
         the key and never sends the commands; a newer client refuses them locally without it).
    1.2  hello's reply announces step_budget_seconds (the sim side's time per reset/step); error codes
         BridgeTimeoutError (the step budget ran out) and ActorLostError (reset rebuilds), both
         ending the episode but not the session.
    1.3  hello's reply announces ``sim.settings`` (what rebuilds the world: its seed, tick, NPCs,
         sensors) and ``capabilities.deterministic``; recordings keep both for exact replays.
"""
from typing import Tuple

PROTOCOL_VERSION = (1, 3)  # type: Tuple[int, int]

DEFAULT_PORT = 5556
DEFAULT_ENDPOINT = "tcp://127.0.0.1:{}".format(DEFAULT_PORT)

#: commands a client may send.
HELLO = "hello"
RESET = "reset"
STEP = "step"
CLOSE = "close"
PING = "ping"
HEARTBEAT = "heartbeat"
SNAPSHOT = "snapshot"
RESTORE = "restore"
COMMANDS = (HELLO, RESET, STEP, CLOSE, PING, HEARTBEAT, SNAPSHOT, RESTORE)
#: commands that need the session opened by hello.
SESSION_COMMANDS = (RESET, STEP, CLOSE, SNAPSHOT, RESTORE)

#: the key of hello's ``capabilities`` map saying whether the world can snapshot and restore.
CAPABILITY_SNAPSHOT = "snapshot"
#: snapshot tokens a session keeps by default; taking one more drops the oldest.
DEFAULT_MAX_SNAPSHOTS = 32

#: largest message (all frames together) either side accepts, unless configured otherwise.
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: largest request the sim side accepts (requests carry actions and options, never images); ZeroMQ
#: drops a connection that sends a single frame of more than twice this.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
#: most frames a request may have (a header plus array frames); the rest of a longer one is discarded.
MAX_REQUEST_FRAMES = 64
#: error replies quote at most this much of a message and of a traceback (replies stay < 64 KiB).
MAX_ERROR_MESSAGE_CHARS = 4 * 1024
MAX_TRACEBACK_CHARS = 16 * 1024
#: arrays at least this large travel in their own frame; smaller ones go inline in the msgpack header.
#: Inline costs two extra copies plus the extension machinery, which measurably slows an 84x84x3
#: camera (docs/benchmarks.md); frames under 64 KiB are still copied by ZeroMQ, larger ones are not.
DEFAULT_INLINE_LIMIT = 4 * 1024
#: arrays at least this large use the shared-memory path when it was negotiated.
DEFAULT_SHM_LIMIT = 64 * 1024

DEFAULT_TIMEOUT_SECONDS = 10.0


def step_budget_margin(budget: float) -> float:
    """Seconds a client's request timeout must exceed the sim side's announced step budget by.

    The budget bounds the sim side's work on a reset or step (a CARLA tick plus its sensors' data);
    the margin covers encoding, the network and a loaded machine, so that a sim-side timeout
    (which names the sensor and frame) always reaches the trainer before its own request times out.
    """
    return max(1.0, 0.25 * budget)


DEFAULT_HEARTBEAT_SECONDS = 1.0
#: the server ends a session after this many heartbeat intervals without hearing from its trainer.
HEARTBEAT_MISSES_ALLOWED = 5


def version_string(version: Tuple[int, int] = PROTOCOL_VERSION) -> str:
    return "{}.{}".format(version[0], version[1])
