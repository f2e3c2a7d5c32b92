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
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import zmq

from bridge import protocol
from bridge.codec import Encoder, decode, peek_seq
from bridge.errors import (BridgeError, ProtocolError, SessionError, SnapshotError,
                           SnapshotUnsupportedError, VersionMismatchError, wire_code)
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


class _Session(object):
    def __init__(self, peer: bytes, timeout: float, shm: Optional[ShmWriter],
                 max_snapshots: int) -> None:
        self.id = secrets.token_hex(8)
        self.peer = peer
        self.timeout = timeout
        self.shm = shm
        self.last_seen = time.monotonic()
        self.snapshots = SnapshotStore(max_snapshots, "session " + self.id)


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
        max_snapshots: snapshot tokens kept per session; taking one more drops the oldest.
    """

    def __init__(self, handler: SessionHandler, bind: str = protocol.DEFAULT_ENDPOINT,
                 allow_remote: bool = False, use_shm: bool = True, idle_timeout: float = 60.0,
                 max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
                 shm_limit: int = protocol.DEFAULT_SHM_LIMIT,
                 max_snapshots: int = protocol.DEFAULT_MAX_SNAPSHOTS) -> None:
        check_bind_endpoint(bind, allow_remote)
        if max_snapshots < 1:
            raise ValueError("max_snapshots must be at least 1, got {!r}".format(max_snapshots))
        self.handler = handler
        description = handler.describe()
        self.sim_name = str(description["name"])
        self.sim_version = str(description["version"])
        self.spec = description["spec"]  # type: WorldSpec
        budget = description.get("step_budget_seconds")
        self.step_budget = float(budget) if budget is not None else None  # type: Optional[float]
        self.can_snapshot = bool(description.get("snapshot", False))
        self.deterministic = bool(description.get("deterministic", False))
        self.sim_settings = dict(description.get("settings") or {})
        self.max_snapshots = int(max_snapshots)
        self.use_shm = use_shm and shm_available()
        self.idle_timeout = idle_timeout
        self.max_message_bytes = max_message_bytes
        self.shm_limit = shm_limit
        self.session = None  # type: Optional[_Session]
        self.sessions_served = 0
        self.requests_served = 0
        self._encoder = Encoder()
        self._context = zmq.Context()
        self._socket = make_socket(self._context, zmq.ROUTER, max_message_bytes, bind)
        try:
            self._socket.bind(bind)
        except zmq.ZMQError as e:
            self._socket.close(linger=0)
            self._context.term()
            raise BridgeError("cannot listen on {}: {} (is another carla_client already using this "
                              "port?)".format(bind, e)) from e
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
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
        if not self._socket.poll(timeout * 1000):
            return False
        frames = self._socket.recv_multipart()  # requests are small: plain bytes are cheapest
        self._handle(frames)
        return True

    def _handle(self, frames: List[Any]) -> None:
        peer = frames[0]
        body_frames = frames[1:]
        envelope = []  # type: List[bytes]
        if body_frames and len(body_frames[0]) == 0:  # a REQ client's empty delimiter
            envelope, body_frames = [b""], body_frames[1:]
        seq = None
        try:
            request = decode(body_frames, self.max_message_bytes)
            if not isinstance(request, dict):
                raise ProtocolError("request is not a map")
            seq = request.get("seq")
            command = request.get("cmd")
            if not isinstance(seq, int) or isinstance(seq, bool):
                raise ProtocolError("request has no integer 'seq'")
            if command == protocol.HEARTBEAT:
                self._heartbeat(request)
                return  # heartbeats get no reply
            if command not in self._handlers:
                raise ProtocolError("unknown command {!r}; known: {}".format(
                    command, ", ".join(protocol.COMMANDS)))
            body = request.get("body") or {}
            if not isinstance(body, dict):
                raise ProtocolError("request body must be a map")
            if command in protocol.SESSION_COMMANDS:
                self._check_session(request)
            result = self._handlers[command](peer, body)
            if command in protocol.SESSION_COMMANDS and self.session is not None:
                self.session.last_seen = time.monotonic()  # a slow handler is not a silent trainer
            reply = {"seq": seq, "ok": True, "body": result}
            use_shm = (command in (protocol.RESET, protocol.STEP) and request.get("shm") is True
                       and self.session is not None and self.session.shm is not None)
        except Exception as e:  # every failure becomes an error reply; the server stays up
            self._log_failure(e)
            if seq is None and body_frames:
                seq = peek_seq(body_frames[0])
            reply = {"seq": seq, "ok": False, "error": {
                "code": wire_code(e), "message": str(e),
                "traceback": "" if isinstance(e, BridgeError) else traceback.format_exc()}}
            use_shm = False
        self._send(peer, envelope, reply, use_shm)
        self.requests_served += 1

    def _send(self, peer: bytes, envelope: List[bytes], reply: Dict[str, Any], use_shm: bool
              ) -> None:
        try:
            if use_shm:
                writer = self.session.shm
                writer.begin_reply()
                frames = self._encoder.encode(reply, writer.write, self.shm_limit)
            else:
                frames = self._encoder.encode(reply)
        except ProtocolError as e:  # the handler produced something unsendable
            logger.error("cannot encode reply: %s", e)
            frames = self._encoder.encode({"seq": reply.get("seq"), "ok": False, "error": {
                "code": "ProtocolError", "message": "sim side produced an unsendable reply: {}"
                .format(e), "traceback": ""}})
        send_frames(self._socket, [peer] + envelope + frames)

    def _log_failure(self, error: Exception) -> None:
        if isinstance(error, (ProtocolError, SessionError, VersionMismatchError, SnapshotError)):
            logger.warning("rejected request: %s", error)
        else:
            logger.exception("request failed")

    # -- sessions --------------------------------------------------------------------------------

    def _check_session(self, request: Dict[str, Any]) -> None:
        wanted = request.get("session")
        if self.session is None:
            raise SessionError("no session is open on {}: send hello first (the server may have "
                               "restarted, or ended a silent session)".format(self.endpoint))
        if wanted != self.session.id:
            raise SessionError("session {!r} is not the current session on {}: another trainer sent "
                               "hello since, or the server restarted".format(wanted, self.endpoint))
        self.session.last_seen = time.monotonic()

    def _heartbeat(self, request: Dict[str, Any]) -> None:
        if self.session is not None and request.get("session") == self.session.id:
            self.session.last_seen = time.monotonic()

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
        session.snapshots.clear()  # tokens die with their session
        try:
            self.handler.close_session()
        finally:
            if session.shm is not None:
                session.shm.close()
        logger.info("session %s ended", session.id)

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
        if self.session is not None:
            logger.info("new hello: ending session %s of the previous trainer", self.session.id)
            self.end_session()
        heartbeat = body.get("heartbeat_seconds")
        timeout = (float(heartbeat) * protocol.HEARTBEAT_MISSES_ALLOWED
                   if isinstance(heartbeat, (int, float)) and heartbeat > 0 else self.idle_timeout)
        shm = self._make_shm() if body.get("shm") is True and self.use_shm else None
        try:
            self.handler.open_session()
        except BaseException:
            if shm is not None:
                shm.close()
            self.handler.close_session()
            raise
        self.session = _Session(peer, timeout, shm, self.max_snapshots)
        self.sessions_served += 1
        logger.info("session %s opened by client %r (heartbeat timeout %.1f s, shm %s)",
                    self.session.id, body.get("client"), timeout, "on" if shm else "off")
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
            raise ProtocolError("reset seed must be an integer or null, got {!r}".format(seed))
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

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Ends any session (restoring the world) and closes the socket. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.end_session()
        finally:
            self._socket.close(linger=0)
            self._context.term()

    def __enter__(self) -> "BridgeServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
