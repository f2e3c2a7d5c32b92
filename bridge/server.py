"""The sim side of the bridge: a ROUTER-socket server that serves one trainer session at a time.

The server owns the protocol (decoding, validation, sessions, heartbeats, error replies); a
SessionHandler owns the world. Any malformed or failing request gets an error reply and the server
keeps serving. A session ends when its trainer says ``close``, when a new trainer says ``hello``, or
when the trainer falls silent (no request or heartbeat for its announced heartbeat interval times
HEARTBEAT_MISSES_ALLOWED): in every case the handler's ``close_session`` restores the world.
"""
import logging
import secrets
import time
import traceback
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import numpy as np
import zmq
from zmq.auth.thread import ThreadAuthenticator

from bridge import protocol
from bridge.codec import Encoder, decode, frames_size, peek_seq
from bridge.errors import (BridgeError, MessageTooLargeError, ProtocolError, SessionBusyError,
                           SessionError, SnapshotError, SnapshotUnsupportedError,
                           VersionMismatchError, quote, truncate, wire_code)
from bridge.guard import DEFAULT_MEMORY_BUDGET, Connection, ConnectionGuard
from bridge.keys import ServerKeys, load_server_keys
from bridge.shm import ShmWriter, remove_stale_files, shm_available
from bridge.snapshots import SnapshotStore
from bridge.spec import WorldSpec, validate_fields
from bridge.transport import check_bind_endpoint, make_socket, send_frames

logger = logging.getLogger(__name__)


class SessionHandler(object):
    """What a world offers the server. carla_client.serve adapts a WorldBackend to this."""

    def describe(self) -> Dict[str, Any]:
        """``{"name": str, "version": str, "spec": WorldSpec}`` and optionally ``"snapshot": bool``,
        ``"deterministic": bool`` (both default False) and ``"settings": map`` (what rebuilds the
        world, e.g. its seed); constant for the process.

        Optionally ``"step_budget_seconds"``: the most a reset or step may take on this side (a
        CARLA tick plus its sensors' data), announced in ``hello`` so that the trainer's request
        timeout exceeds it.

        Optionally ``"tick_latency_seconds"``: the least wall time a reset or step lasts, from the
        arrival of its request to the departure of its reply: the server sleeps what decoding, the
        world and encoding leave of it. It emulates a simulator whose tick is bound by GPU
        rendering, which overlaps the sim side's CPU work (the built-in world's --tick-latency-ms).
        """
        raise NotImplementedError

    def open_session(self) -> None:
        """A trainer said hello: prepare the world (sync mode, actors)."""

    def reset(self, seed: Optional[int], options: Dict[str, Any]) -> Dict[str, Any]:
        """Returns a tick map: frame, sim_time, observation, measurements, events."""
        raise NotImplementedError

    def step(self, action: Dict[str, np.ndarray]) -> Dict[str, Any]:
        """``action`` is already validated against the spec; returns a tick map."""
        raise NotImplementedError

    def snapshot(self) -> Any:
        """The world's full current state, as an opaque object the server keeps under a token.

        Raises:
            SnapshotUnsupportedError: this world cannot snapshot (the default).
        """
        raise SnapshotUnsupportedError("this world cannot snapshot")

    def restore(self, state: Any) -> Dict[str, Any]:
        """Puts the world back into ``state`` (from ``snapshot``); returns that moment's tick map.

        Raises:
            SnapshotUnsupportedError: this world cannot snapshot (the default).
        """
        raise SnapshotUnsupportedError("this world cannot restore snapshots")

    def close_session(self) -> None:
        """The trainer is gone: restore the world's settings and destroy actors. Idempotent."""


class _LogLimiter(object):
    """Lets at most ``burst`` log lines through per ``window`` seconds and counts the rest, so a peer
    that sends garbage in a loop cannot flood the log (or block the server on a full stderr pipe)."""

    def __init__(self, burst: int = 20, window: float = 10.0) -> None:
        self.burst, self.window = burst, window
        self._window_start = time.monotonic()
        self._count = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._window_start >= self.window:
            suppressed = self._count - self.burst
            if suppressed > 0:
                logger.warning("%d more rejected request(s) in the last %.0f s not logged",
                               suppressed, now - self._window_start)
            self._window_start, self._count = now, 0
        self._count += 1
        return self._count <= self.burst


class _Session(object):
    """The live session and who owns it: the ZeroMQ routing identity that said hello (plus the one its
    heartbeat socket announced), and the CURVE public key when authentication is on."""

    def __init__(self, peer: bytes, heartbeat_peer: Optional[bytes], user: str, timeout: float,
                 shm: Optional[ShmWriter], connection: Optional[Connection],
                 max_snapshots: int) -> None:
        self.id = secrets.token_hex(16)
        self.peer = peer
        self.heartbeat_peer = heartbeat_peer
        self.user = user
        self.timeout = timeout
        self.shm = shm
        self.connection = connection
        self.heartbeat_connection = None  # type: Optional[Connection]
        self.opened = self.last_seen = time.monotonic()
        self.snapshots = SnapshotStore(max_snapshots, "session " + self.label)

    @property
    def label(self) -> str:
        """What logs may show: never the whole id (anyone reading the log could use it)."""
        return self.id[:6] + "..."


class _AllowedKeys(object):
    """pyzmq's CURVE credentials provider: a fixed set of z85 client public keys."""

    def __init__(self, keys: FrozenSet[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.keys
        if not allowed:
            logger.warning("refused a CURVE client whose public key is not in the key directory")
        return allowed


def _short(session_id: Any) -> str:
    return quote(session_id[:6] + "..." if isinstance(session_id, str) else session_id, 40)


class BridgeServer(object):
    """Serves a SessionHandler on a ZeroMQ ROUTER socket.

    Args:
        handler: the world.
        bind: endpoint to listen on; loopback unless ``allow_remote``.
        allow_remote: permit binding a non-loopback address.
        use_shm: offer the /dev/shm path to same-host clients that ask for it.
        idle_timeout: seconds of silence after which a session without heartbeats is ended.
        max_message_bytes: larger requests get a MessageTooLargeError reply.
        shm_limit: arrays of at least this many bytes go through shared memory when negotiated.
        max_reply_bytes: a larger reply is replaced by a MessageTooLargeError reply.
        memory_budget: growth in bytes of this process over its size at start after which peers'
            connections are dropped (bridge/guard.py); 0 turns the guard off.
        curve: a key directory (bridge/keys.py): require CurveZMQ with its server.key_secret and
            accept exactly the client public keys in it.
        insecure: permit a non-loopback bind without ``curve`` (anyone who reaches the port can then
            drive the world).
        max_snapshots: snapshot tokens kept per session; taking one more drops the oldest.

    Raises:
        BridgeError: the endpoint cannot be bound, or is not loopback without ``allow_remote`` and
            ``curve`` (or ``insecure``). CurveError: ``curve`` keys missing or unusable.
    """

    def __init__(self, handler: SessionHandler, bind: str = protocol.DEFAULT_ENDPOINT,
                 allow_remote: bool = False, use_shm: bool = True, idle_timeout: float = 60.0,
                 max_message_bytes: int = protocol.DEFAULT_MAX_REQUEST_BYTES,
                 shm_limit: int = protocol.DEFAULT_SHM_LIMIT,
                 max_reply_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, curve: Optional[str] = None,
                 insecure: bool = False,
                 max_snapshots: int = protocol.DEFAULT_MAX_SNAPSHOTS) -> None:
        check_bind_endpoint(bind, allow_remote, authenticated=curve is not None, insecure=insecure)
        if max_snapshots < 1:
            raise ValueError("max_snapshots must be at least 1, got {!r}".format(max_snapshots))
        keys = load_server_keys(curve) if curve is not None else None
        self.handler = handler
        description = handler.describe()
        self.sim_name = str(description["name"])
        self.sim_version = str(description["version"])
        self.spec = description["spec"]  # type: WorldSpec
        budget = description.get("step_budget_seconds")
        self.step_budget = float(budget) if budget is not None else None  # type: Optional[float]
        self.tick_latency = float(description.get("tick_latency_seconds") or 0.0)
        self.can_snapshot = bool(description.get("snapshot", False))
        self.deterministic = bool(description.get("deterministic", False))
        self.sim_settings = dict(description.get("settings") or {})
        self.max_snapshots = int(max_snapshots)
        self.use_shm = use_shm and shm_available()
        self.idle_timeout = idle_timeout
        self.max_message_bytes = max_message_bytes
        self.max_reply_bytes = max_reply_bytes
        self.shm_limit = shm_limit
        self.session = None  # type: Optional[_Session]
        self.sessions_served = 0
        self.requests_served = 0
        self._request_fd = None  # type: Optional[int]
        self._request_arrived = 0.0  # time.monotonic() when the request being handled was seen
        self._request_user = ""
        self._rejections = _LogLimiter()
        self._encoder = Encoder()
        self._context = zmq.Context()
        self._authenticator = None  # type: Optional[ThreadAuthenticator]
        self.curve = curve
        self._socket = make_socket(self._context, zmq.ROUTER, max_message_bytes, bind)
        try:
            if keys is not None:
                self._require_curve(keys)
            self._socket.bind(bind)
        except zmq.ZMQError as e:
            self._stop_authenticator()
            self._socket.close(linger=0)
            self._context.term()
            raise BridgeError("cannot listen on {}: {} (is another carla_client already using this "
                              "port?)".format(bind, e)) from e
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        # one poller for every wait (Socket.poll builds a new zmq.Poller on each call)
        self._request_poller = zmq.Poller()
        self._request_poller.register(self._socket, zmq.POLLIN)
        self.guard = ConnectionGuard(self._socket, memory_budget)
        self.guard.start()
        if self.use_shm:
            remove_stale_files()
        self.closed = False
        self._handlers = {
            protocol.HELLO: self._hello, protocol.RESET: self._reset, protocol.STEP: self._step,
            protocol.CLOSE: self._close, protocol.PING: self._ping,
            protocol.SNAPSHOT: self._snapshot, protocol.RESTORE: self._restore,
        }  # type: Dict[str, Callable[[bytes, Dict[str, Any]], Dict[str, Any]]]

    # -- serving ---------------------------------------------------------------------------------

    def serve(self, should_stop: Callable[[], bool] = lambda: False, poll_seconds: float = 0.1
              ) -> None:
        """Serves requests until ``should_stop()`` returns True (checked every ``poll_seconds``)."""
        while not should_stop():
            self.serve_once(poll_seconds)

    def serve_once(self, timeout: float) -> bool:
        """Handles at most one message, waiting up to ``timeout`` seconds. True if one was handled."""
        self._expire_silent_session()
        if not self._request_poller.poll(timeout * 1000):
            return False
        self._request_arrived = time.monotonic()
        frames, dropped = self._receive()
        self._handle(frames, dropped)
        return True

    @staticmethod
    def _user_id(frames: List[Any]) -> str:
        """The authenticated peer (its CURVE public key) from the ZAP handler; "" without CURVE."""
        for frame in frames[1:2]:
            try:
                return str(frame.get("User-Id"))
            except (zmq.ZMQError, AttributeError, UnicodeDecodeError):
                return ""
        return ""

    @staticmethod
    def _source_fd(frames: List[Any]) -> Optional[int]:
        """The descriptor of the connection a message came in on (libzmq's ZMQ_SRCFD)."""
        for frame in frames[1:2]:  # the routing-id frame carries none; the body frames do
            try:
                return frame.get(zmq.SRCFD)
            except (zmq.ZMQError, AttributeError):
                return None
        return None

    def _receive(self) -> Tuple[List[Any], int]:
        """The next message's frames, read one by one; frames past the limits are dropped unread.

        libzmq has buffered the whole message already (it only delivers complete ones): reading it
        frame by frame without copies keeps an oversized one from being duplicated into Python
        objects. Returns (routing id + kept frames, number of frames dropped).
        """
        frames = []  # type: List[Any]
        kept_bytes = dropped = 0
        more = True
        while more:
            frame = self._socket.recv(copy=False)
            more = frame.more
            size = len(frame)
            if dropped or len(frames) > protocol.MAX_REQUEST_FRAMES + 1 or (
                    len(frames) > 1 and kept_bytes + size > self.max_message_bytes):
                dropped += 1  # the routing id and the header are kept: enough for a typed reply
            else:
                frames.append(frame)
                kept_bytes += size if len(frames) > 1 else 0
        return frames, dropped

    def _handle(self, frames: List[Any], dropped: int = 0) -> None:
        peer = frames[0].bytes
        self._request_fd = self._source_fd(frames)
        # (only with CURVE: asking for a property ZeroMQ does not have raises, which costs ~10 us)
        self._request_user = self._user_id(frames) if self._authenticator is not None else ""
        body_frames = frames[1:]
        envelope = []  # type: List[bytes]
        if body_frames and len(body_frames[0]) == 0:  # a REQ client's empty delimiter
            envelope, body_frames = [b""], body_frames[1:]
        seq = None
        try:
            if dropped:
                raise MessageTooLargeError(
                    "request exceeds the limit of {} bytes or {} frames ({} frame(s) discarded)"
                    .format(self.max_message_bytes, protocol.MAX_REQUEST_FRAMES, dropped))
            request = decode(body_frames, self.max_message_bytes)
            seq, command, session, body = _check_header(request)
            if command == protocol.HEARTBEAT:
                self._heartbeat(peer, session)
                return  # heartbeats get no reply
            if command in protocol.SESSION_COMMANDS:
                self._check_session(peer, session, self._request_user)
            result = self._handlers[command](peer, body)
            if command in protocol.SESSION_COMMANDS and self.session is not None:
                self.session.last_seen = time.monotonic()  # a slow handler is not a silent trainer
            reply = {"seq": seq, "ok": True, "body": result}
            tick = command in (protocol.RESET, protocol.STEP)
            use_shm = (tick and request.get("shm") is True and self.session is not None
                       and self.session.shm is not None)
            not_before = self._request_arrived + self.tick_latency if tick else 0.0
        except Exception as e:  # every failure becomes an error reply; the server stays up
            self._log_failure(e)
            if seq is None and body_frames:
                seq = peek_seq(body_frames[0])
            reply = _error_reply(seq, e)
            use_shm = False
            not_before = 0.0
        self._send(peer, envelope, reply, use_shm, not_before)
        if not_before and self.session is not None:  # the emulated tick was ours, not the trainer's
            self.session.last_seen = time.monotonic()  # silence (heartbeats queued meanwhile)
        self.requests_served += 1

    def _send(self, peer: bytes, envelope: List[bytes], reply: Dict[str, Any], use_shm: bool,
              not_before: float = 0.0) -> None:
        """Encodes ``reply`` and sends it, not before ``not_before`` (time.monotonic()): the
        emulated tick latency is slept once the reply is ready, so it covers all the work."""
        try:
            if use_shm:
                writer = self.session.shm
                writer.begin_reply()
                frames = self._encoder.encode(reply, writer.write, self.shm_limit)
            else:
                frames = self._encoder.encode(reply)
            if frames_size(frames) > self.max_reply_bytes:
                raise MessageTooLargeError("reply of {} bytes exceeds the sim side's limit of {} "
                                           "bytes".format(frames_size(frames), self.max_reply_bytes))
        except ProtocolError as e:  # the handler produced something unsendable
            logger.error("cannot send reply: %s", truncate(str(e), protocol.MAX_ERROR_MESSAGE_CHARS))
            frames = self._encoder.encode(_error_reply(reply.get("seq"), ProtocolError(
                "sim side produced an unsendable reply: {}".format(e))))
        remaining = not_before - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        send_frames(self._socket, [peer] + envelope + frames)

    def _log_failure(self, error: Exception) -> None:
        message = truncate(str(error), protocol.MAX_ERROR_MESSAGE_CHARS)
        if isinstance(error, (ProtocolError, SessionError, VersionMismatchError, SnapshotError)):
            if self._rejections.allow():
                logger.warning("rejected request: %s", message)
        else:
            logger.error("request failed: %s: %s\n%s", type(error).__name__, message,
                         truncate(traceback.format_exc(), protocol.MAX_TRACEBACK_CHARS))

    # -- sessions --------------------------------------------------------------------------------

    def _check_session(self, peer: bytes, wanted: Optional[str], user: str) -> None:
        """Lets a request through only if it names the live session and comes from its owner.

        Raises:
            SessionError: no session, another session, or the right id from another connection (or
                another CURVE key): then the request is not executed.
        """
        session = self.session
        if session is None:
            raise SessionError("no session is open on {}: send hello first (the server may have "
                               "restarted, or ended a silent session)".format(self.endpoint))
        if wanted != session.id:
            raise SessionError("session {} is not the current session on {}: it ended (timeout, "
                               "close) or the server restarted".format(_short(wanted), self.endpoint))
        if peer != session.peer or user != session.user:
            raise SessionError("session {} belongs to the connection that opened it; this request "
                               "came from another connection and was not executed".format(
                                   _short(wanted)))
        session.last_seen = time.monotonic()
        if session.connection is None or self._request_fd != session.connection.fd:
            connection = self.guard.connection(self._request_fd)  # the owner reconnected
            if connection is not None:
                session.connection = connection
                self._protect(session)

    def _heartbeat(self, peer: bytes, wanted: Optional[str]) -> None:
        session = self.session
        if (session is not None and wanted == session.id and self._request_user == session.user
                and peer in (session.peer, session.heartbeat_peer)):
            session.last_seen = time.monotonic()
            known = session.heartbeat_connection
            if peer == session.heartbeat_peer and (known is None or known.fd != self._request_fd):
                session.heartbeat_connection = self.guard.connection(self._request_fd)
                self._protect(session)

    def _protect(self, session: _Session) -> None:
        """The memory guard never drops the owner's connections (requests and heartbeats)."""
        self.guard.protected = tuple(c for c in (session.connection, session.heartbeat_connection)
                                     if c is not None)

    def _owner_gone(self, session: _Session) -> Optional[str]:
        """Why the session's trainer counts as gone (a new hello may then take over), or None."""
        silent = time.monotonic() - session.last_seen
        if silent > session.timeout:
            return "silent for {:.1f} s".format(silent)
        if session.connection is not None and not self.guard.is_connected(session.connection):
            return "its connection dropped"
        return None

    def _expire_silent_session(self) -> None:
        session = self.session
        if session is not None and time.monotonic() - session.last_seen > session.timeout:
            logger.warning("trainer silent for %.1f s: assuming it died; ending its session and "
                           "waiting for a new hello", time.monotonic() - session.last_seen)
            self.end_session()

    def end_session(self) -> None:
        """Ends the current session, if any: the handler restores the world. Idempotent."""
        session, self.session = self.session, None
        if session is None:
            return
        self.guard.protected = ()
        session.snapshots.clear()  # tokens die with their session
        try:
            self.handler.close_session()
        finally:
            if session.shm is not None:
                session.shm.close()
        logger.info("session %s ended", session.label)

    # -- commands --------------------------------------------------------------------------------

    def _hello(self, peer: bytes, body: Dict[str, Any]) -> Dict[str, Any]:
        version = body.get("protocol")
        if (not isinstance(version, list) or len(version) != 2
                or not all(isinstance(v, int) for v in version)):
            raise ProtocolError("hello must carry 'protocol': [major, minor]")
        ours = protocol.PROTOCOL_VERSION
        if version[0] != ours[0]:
            raise VersionMismatchError(protocol.version_string(ours),
                                       protocol.version_string(tuple(version)))
        warnings = []
        if version[1] != ours[1]:
            warnings.append("client speaks protocol {} and {} speaks {}: minor versions differ".format(
                protocol.version_string(tuple(version)), self.sim_name, protocol.version_string()))
        hb_peer = body.get("heartbeat_id")
        if hb_peer is not None and not isinstance(hb_peer, bytes):
            raise ProtocolError("hello 'heartbeat_id' must be bytes or null")
        session = self.session
        if session is not None and (peer != session.peer or self._request_user != session.user):
            gone = self._owner_gone(session)
            if gone is None:
                raise SessionBusyError(
                    "another trainer is using {} (its session is {:.0f} s old, last heard {:.1f} s "
                    "ago): stop it first, or start another carla_client for this trainer".format(
                        self.endpoint, time.monotonic() - session.opened,
                        time.monotonic() - session.last_seen))
            logger.info("new hello: ending session %s of the previous trainer (%s)", session.label,
                        gone)
        if session is not None:
            self.end_session()
        heartbeat = body.get("heartbeat_seconds")
        if heartbeat is not None and (not isinstance(heartbeat, (int, float))
                                      or isinstance(heartbeat, bool) or not 0 <= heartbeat <= 3600):
            raise ProtocolError("hello 'heartbeat_seconds' must be a number in [0, 3600], got {}"
                                .format(quote(heartbeat, 60)))
        timeout = (float(heartbeat) * protocol.HEARTBEAT_MISSES_ALLOWED
                   if heartbeat else self.idle_timeout)
        shm = self._make_shm() if body.get("shm") is True and self.use_shm else None
        try:
            self.handler.open_session()
        except BaseException:
            if shm is not None:
                shm.close()
            self.handler.close_session()
            raise
        connection = self.guard.connection(self._request_fd)
        self.session = _Session(peer, hb_peer, self._request_user, timeout, shm, connection,
                                self.max_snapshots)
        self._protect(self.session)
        self.sessions_served += 1
        logger.info("session %s opened by client %s (heartbeat timeout %.1f s, shm %s)",
                    self.session.label, quote(body.get("client"), 80), timeout,
                    "on" if shm else "off")
        return {
            "protocol": list(ours),
            "sim": {"name": self.sim_name, "version": self.sim_version,
                    "settings": self.sim_settings},
            "spec": self.spec.to_wire(),
            "session": self.session.id,
            "shm": shm.describe() if shm is not None else None,
            "warnings": warnings,
            "step_budget_seconds": self.step_budget,
            "capabilities": {protocol.CAPABILITY_SNAPSHOT: self.can_snapshot,
                             "max_snapshots": self.max_snapshots if self.can_snapshot else 0,
                             "deterministic": self.deterministic},
        }

    def _make_shm(self) -> Optional[ShmWriter]:
        sizes = [int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize
                 for f in self.spec.observation if all(d >= 0 for d in f.shape)]
        slot = sum(s + 64 for s in sizes if s >= self.shm_limit)
        if slot == 0:
            return None
        try:
            return ShmWriter(slot)
        except OSError as e:
            logger.warning("shared memory unavailable (%s): using TCP frames", e)
            return None

    def _reset(self, peer: bytes, body: Dict[str, Any]) -> Dict[str, Any]:
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ProtocolError("reset seed must be an integer or null, got {}".format(quote(seed)))
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise ProtocolError("reset options must be a map")
        return self.handler.reset(seed, options)

    def _step(self, peer: bytes, body: Dict[str, Any]) -> Dict[str, Any]:
        action = validate_fields(self.spec.action, body.get("action"), "action")
        return self.handler.step(action)

    def _snapshot(self, peer: bytes, body: Dict[str, Any]) -> Dict[str, Any]:
        self._check_can_snapshot()
        return {"token": self.session.snapshots.add(self.handler.snapshot())}

    def _restore(self, peer: bytes, body: Dict[str, Any]) -> Dict[str, Any]:
        self._check_can_snapshot()
        return self.handler.restore(self.session.snapshots.get(body.get("token")))

    def _check_can_snapshot(self) -> None:
        if not self.can_snapshot:
            raise SnapshotUnsupportedError(
                "the {} world ({}) cannot save and restore its full state, so it refuses to "
                "snapshot rather than approximate (hello announced capabilities.snapshot = false)"
                .format(self.sim_name, self.sim_version))

    def _close(self, peer: bytes, body: Dict[str, Any]) -> Dict[str, Any]:
        self.end_session()
        return {}

    def _ping(self, peer: bytes, body: Dict[str, Any]) -> Dict[str, Any]:
        return {"sim": {"name": self.sim_name, "version": self.sim_version},
                "protocol": list(protocol.PROTOCOL_VERSION),
                "session_active": self.session is not None,
                "sessions_served": self.sessions_served}

    def _require_curve(self, keys: ServerKeys) -> None:
        """CURVE on the socket, and pyzmq's ZAP authenticator thread accepting only ``keys.clients``.

        Clients without keys, or with a key not in the list, fail the handshake: no request of
        theirs ever reaches the serve loop.
        """
        self._authenticator = ThreadAuthenticator(self._context, log=logging.getLogger("bridge.auth"))
        self._authenticator.start()
        self._authenticator.configure_curve_callback("*", _AllowedKeys(keys.clients))
        self._socket.curve_secretkey = keys.secret
        self._socket.curve_publickey = keys.public
        self._socket.curve_server = True

    def _stop_authenticator(self) -> None:
        authenticator, self._authenticator = self._authenticator, None
        if authenticator is not None:
            authenticator.stop()

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Ends any session (restoring the world) and closes the socket. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.end_session()
        finally:
            self.guard.close()
            self._socket.close(linger=0)
            self._stop_authenticator()
            self._context.term()

    def __enter__(self) -> "BridgeServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _check_header(request: Any) -> Tuple[int, str, Optional[str], Dict[str, Any]]:
    """Checks the type of every header field: (seq, cmd, session, body).

    Raises:
        ProtocolError: a field is missing or of the wrong type (never a TypeError from deeper down).
    """
    if not isinstance(request, dict):
        raise ProtocolError("request is not a map but {}".format(type(request).__name__))
    seq = request.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ProtocolError("request has no integer 'seq' (got {})".format(quote(seq, 60)))
    command = request.get("cmd")
    if not isinstance(command, str) or command not in protocol.COMMANDS:
        raise ProtocolError("unknown command {}; known: {}".format(
            quote(command, 60), ", ".join(protocol.COMMANDS)))
    session = request.get("session")
    if session is not None and not isinstance(session, str):
        raise ProtocolError("request 'session' must be a string or null, got {}".format(
            type(session).__name__))
    if not isinstance(request.get("shm", False), (bool, type(None))):
        raise ProtocolError("request 'shm' must be true or false")
    body = request.get("body")
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ProtocolError("request body must be a map, got {}".format(type(body).__name__))
    return seq, command, session, body


def _error_reply(seq: Optional[int], error: BaseException) -> Dict[str, Any]:
    """An error reply of bounded size: the message and traceback are truncated, and our own
    (BridgeError) rejections carry no traceback at all."""
    return {"seq": seq, "ok": False, "error": {
        "code": wire_code(error),
        "message": truncate(str(error), protocol.MAX_ERROR_MESSAGE_CHARS),
        "traceback": "" if isinstance(error, BridgeError) else truncate(
            traceback.format_exc(), protocol.MAX_TRACEBACK_CHARS)}}
