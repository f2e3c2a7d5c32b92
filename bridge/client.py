"""The trainer's side of the bridge: a lockstep request/reply client with timeouts and liveness checks.

One request is in flight at a time. Each carries a sequence number and the reply must echo it, so a late
reply to a request that already timed out is recognised and dropped instead of being taken as the
answer to the next request. ``step()`` is ``send_step()`` then ``recv_tick()``: a caller driving many
sims (agent.vec.BridgeVecEnv) sends to all of them first, waits on all their ``wait_sockets`` with one
poller, and collects each reply with ``recv_tick(block=False)``; deadlines run from the send either way. While waiting, the client watches its connection: a server that dies (its
TCP connection drops) is reported at once as PeerDisconnectedError; a server that hangs is reported
when the timeout expires. A background thread sends heartbeats so the server can tell a trainer that
is busy (a PPO update) from one that is dead.
"""
import logging
import os
import secrets
import threading
import time
import warnings
from collections import deque
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import zmq

from bridge import protocol
from bridge.codec import Encoder, decode, peek_seq
from bridge.protocol import PROTOCOL_VERSION
from bridge.errors import (BridgeError, BridgeTimeoutError, PeerDisconnectedError, ProtocolError,
                           SessionError, SnapshotUnsupportedError, StepBudgetError,
                           VersionMismatchError, remote_error)
from bridge.keys import ClientKeys, CurveError, apply_client_keys, load_client_keys
from bridge.shm import ShmReader, shm_available
from bridge.spec import Tick, WorldSpec
from bridge.transport import (ConnectionMonitor, is_same_host, make_socket, parse_tcp_endpoint,
                              send_frames)

logger = logging.getLogger(__name__)

#: how often a waiting client checks whether the server's connection dropped.
_LIVENESS_SLICE_SECONDS = 0.05
#: how long a request sent while the connection is down waits for ZeroMQ to reconnect (a restarted
#: sim side is back within its reconnect interval, 100 ms) before the sim side counts as gone.
_RECONNECT_GRACE_SECONDS = 1.0


class ProtocolVersionWarning(UserWarning):
    """The peer speaks the same major protocol version but another minor one."""


class _Pending(NamedTuple):
    """The request in flight: what, which sequence number, when it was sent and when it times out."""

    command: str
    seq: int
    started: float
    deadline: float
    timeout: float
    #: the connection had dropped, and was not back, when the request was sent: ZeroMQ queues it
    #: for a reconnect that never comes if the sim side died between two requests.
    sent_while_down: bool = False


class ServerInfo(NamedTuple):
    """What the ``hello`` reply told us about the sim side.

    ``can_snapshot``, ``max_snapshots`` and ``deterministic`` come from the reply's
    ``capabilities`` and ``sim_settings`` (what rebuilds the world, e.g. its seed) from ``sim`` (protocol
    1.1); a 1.0 server announces none of them: no snapshots, no determinism promised, no settings.
    """

    protocol: str
    sim_name: str
    sim_version: str
    spec: WorldSpec
    session: str
    shm: bool
    can_snapshot: bool = False
    max_snapshots: int = 0
    deterministic: bool = False
    sim_settings: Optional[Dict[str, Any]] = None
    #: seconds the sim side allows itself per reset/step (hello's step_budget_seconds), if announced.
    step_budget: Optional[float] = None


#: one tick as the sim side reported it (see bridge.spec.Tick for the validity of its arrays).
StepReply = Tick


class RoundTripStats(object):
    """Round-trip times and reply times of the most recent requests (for TensorBoard)."""

    def __init__(self, window: int = 2000) -> None:
        self._round_trips = deque(maxlen=window)  # type: deque
        self._step_times = deque(maxlen=window)  # type: deque

    def record(self, command: str, seconds: float) -> None:
        self._round_trips.append(seconds)
        if command == protocol.STEP:
            self._step_times.append(time.monotonic())

    def percentiles(self) -> Tuple[float, float]:
        """(p50, p99) round trip in seconds over the window; (nan, nan) before any request."""
        if not self._round_trips:
            return float("nan"), float("nan")
        p50, p99 = np.percentile(np.fromiter(self._round_trips, float), [50, 99])
        return float(p50), float(p99)

    def ticks_per_second(self) -> float:
        """Steps answered per wall-clock second over the window (nan with fewer than two)."""
        if len(self._step_times) < 2 or self._step_times[-1] <= self._step_times[0]:
            return float("nan")
        return (len(self._step_times) - 1) / (self._step_times[-1] - self._step_times[0])


class _Heartbeat(threading.Thread):
    """Sends ``heartbeat`` for the current session every ``interval`` seconds on its own socket."""

    def __init__(self, context: zmq.Context, endpoint: str, session: str, interval: float,
                 identity: bytes, keys: Optional[ClientKeys]) -> None:
        super().__init__(name="bridge-heartbeat", daemon=True)  # daemon: never keeps a dead trainer up
        self._context, self._endpoint, self._session = context, endpoint, session
        self._interval = interval
        self._identity = identity
        self._keys = keys
        self.stopped = threading.Event()

    def run(self) -> None:
        sock = make_socket(self._context, zmq.DEALER, endpoint=self._endpoint)
        try:
            apply_client_keys(sock, self._keys)
            sock.setsockopt(zmq.ROUTING_ID, self._identity)  # announced in hello: the server's
            sock.connect(self._endpoint)                    # only accepted heartbeat source
            encoder = Encoder()
            message = encoder.encode({"seq": 0, "cmd": protocol.HEARTBEAT, "session": self._session})
            while not self.stopped.wait(self._interval):
                try:
                    sock.send_multipart(message, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass  # not connected right now: the server will notice the silence
        finally:
            sock.close(linger=0)


def _new_identity() -> bytes:
    """A random ZeroMQ routing identity (a leading zero byte is reserved by libzmq)."""
    return b"czb" + secrets.token_bytes(13)


class BridgeClient(object):
    """Lockstep client for one sim-side server.

    Args:
        endpoint: the server's address, ``tcp://HOST:PORT``.
        timeout: seconds to wait for any reply before BridgeTimeoutError.
        hello_timeout: seconds to wait for the hello reply (default: ``timeout``); the server may
            need to connect to CARLA and spawn actors first.
        use_shm: ask for the shared-memory path when the server is on this host.
        copy_arrays: return private copies of received arrays instead of views.
        heartbeat_seconds: heartbeat interval; 0 disables heartbeats (the server then uses its own
            idle timeout).
        max_message_bytes: the largest reply accepted.
        client_name: shown in the sim side's log.
        adapt_timeout: when the sim side announces a step budget (``hello``'s
            ``step_budget_seconds``) that ``timeout`` cannot cover with a margin, raise ``timeout``
            to fit; when False, refuse such a server with StepBudgetError instead.
        curve: a key directory (bridge/keys.py): talk CurveZMQ with its client.key_secret, to the
            server whose public key is its server.key.

    Raises:
        BridgeError: a malformed endpoint. CurveError: ``curve`` keys missing or unusable.
    """

    def __init__(self, endpoint: str = protocol.DEFAULT_ENDPOINT,
                 timeout: float = protocol.DEFAULT_TIMEOUT_SECONDS,
                 hello_timeout: Optional[float] = None, use_shm: bool = True,
                 copy_arrays: bool = False,
                 heartbeat_seconds: float = protocol.DEFAULT_HEARTBEAT_SECONDS,
                 max_message_bytes: int = protocol.DEFAULT_MAX_MESSAGE_BYTES,
                 client_name: str = "carla-zmq-bridge", adapt_timeout: bool = True,
                 curve: Optional[str] = None) -> None:
        if not endpoint.startswith("ipc://"):
            parse_tcp_endpoint(endpoint)
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.requested_timeout = self.timeout
        self.adapt_timeout = adapt_timeout
        self.hello_timeout = float(hello_timeout if hello_timeout is not None else timeout)
        self.use_shm = use_shm
        self.copy_arrays = copy_arrays
        self.heartbeat_seconds = float(heartbeat_seconds)
        self.max_message_bytes = max_message_bytes
        self.client_name = client_name
        self.stats = RoundTripStats()
        self.info = None  # type: Optional[ServerInfo]
        self.curve = curve
        self._keys = load_client_keys(curve) if curve is not None else None
        self._context = zmq.Context()
        self._socket = make_socket(self._context, zmq.DEALER, max_message_bytes, endpoint)
        apply_client_keys(self._socket, self._keys)
        # Our own unguessable routing identities: the server binds the session to them, and a
        # reconnect after a network hiccup keeps the same identity, hence the session.
        self._socket.setsockopt(zmq.ROUTING_ID, _new_identity())
        self._heartbeat_identity = _new_identity()
        self._monitor = ConnectionMonitor(self._socket)
        # one poller for every wait (Socket.poll builds a new zmq.Poller on each call)
        self._reply_poller = zmq.Poller()
        self._reply_poller.register(self._socket, zmq.POLLIN)
        self._socket.connect(endpoint)
        self._encoder = Encoder()
        self._seq = 0
        self._pending = None  # type: Optional[_Pending]
        self._session = None  # type: Optional[str]
        self._shm = None  # type: Optional[ShmReader]
        self._heartbeat = None  # type: Optional[_Heartbeat]
        self._observation_layout = []  # type: List[Tuple[str, np.dtype, Tuple[int, ...]]]
        self.closed = False

    # -- public API ------------------------------------------------------------------------------

    def hello(self) -> ServerInfo:
        """Opens a session: exchanges versions and receives the spec. Replaces any earlier session.

        Raises:
            VersionMismatchError: the server speaks another major protocol version.
            BridgeTimeoutError: no server answered within ``hello_timeout``.
            SessionBusyError: another trainer's session is live on that server.
        """
        self._end_session_locally()
        body = {
            "protocol": list(PROTOCOL_VERSION),
            "client": self.client_name,
            "shm": bool(self.use_shm and shm_available() and is_same_host(self.endpoint)),
            "heartbeat_seconds": self.heartbeat_seconds,
            "heartbeat_id": self._heartbeat_identity if self.heartbeat_seconds > 0 else None,
        }
        reply = self._request(protocol.HELLO, body, self.hello_timeout)
        try:
            version = tuple(int(v) for v in reply["protocol"])
            spec = WorldSpec.from_wire(reply["spec"])
            sim = reply["sim"]
            capabilities = reply.get("capabilities") or {}
            info = ServerInfo(protocol.version_string(version), str(sim["name"]),
                              str(sim["version"]), spec, str(reply["session"]), False,
                              capabilities.get(protocol.CAPABILITY_SNAPSHOT) is True,
                              int(capabilities.get("max_snapshots") or 0),
                              capabilities.get("deterministic") is True,
                              dict(sim.get("settings") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError("malformed hello reply from {}: {}".format(self.endpoint, e)) from e
        self._check_version(version)
        self._session = info.session
        try:
            info = info._replace(step_budget=self._fit_timeout(reply.get("step_budget_seconds")))
        except BridgeError:
            # refused: end the session we just opened, so the sim side restores its world now
            try:
                self._request(protocol.CLOSE, {}, min(self.timeout, 2.0))
            except BridgeError as e:
                logger.debug("close after a refused hello: %s", e)
            self._session = None
            raise
        for text in reply.get("warnings") or []:
            warnings.warn(str(text), ProtocolVersionWarning)
        if reply.get("shm"):
            info = info._replace(shm=self._attach_shm(reply["shm"]))
        if self.heartbeat_seconds > 0:
            self._heartbeat = _Heartbeat(self._context, self.endpoint, info.session,
                                         self.heartbeat_seconds, self._heartbeat_identity,
                                         self._keys)
            self._heartbeat.start()
        self.info = info
        self._observation_layout = [(f.name, np.dtype(f.dtype), f.shape) for f in spec.observation]
        return info

    def reset(self, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None
              ) -> StepReply:
        """Starts an episode and returns its first tick.

        Raises:
            SessionError: no hello yet. RemoteError: the sim side failed. BridgeTimeoutError,
            PeerDisconnectedError: the sim side is gone or stalled.
        """
        self.send_reset(seed, options)
        return self.recv_tick()

    def step(self, action: Dict[str, Any]) -> StepReply:
        """Sends one action; the sim advances exactly one tick and returns it.

        Raises:
            RemoteSpecError: the action breaks the action spec (NaN, out of range, missing field).
            Plus everything ``reset`` raises.
        """
        self.send_step(action)
        return self.recv_tick()

    def send_reset(self, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None
                   ) -> None:
        """The first half of ``reset``: sends the request and returns at once (see ``recv_tick``).

        Raises:
            BridgeError: a request is already in flight. SessionError: no hello yet.
            BridgeTimeoutError: the request could not even be queued before the timeout.
        """
        body = {"seed": None if seed is None else int(seed), "options": dict(options or {})}
        self._send(protocol.RESET, body, self.timeout)

    def send_step(self, action: Dict[str, Any]) -> None:
        """The first half of ``step``: sends the action and returns at once (see ``recv_tick``).

        Raises:
            the same as ``send_reset``.
        """
        self._send(protocol.STEP, {"action": action}, self.timeout)

    def recv_tick(self, block: bool = True) -> Optional[StepReply]:
        """The second half of ``step``/``reset``: the tick answering the request in flight.

        With ``block=False`` it never waits: None means the reply has not arrived yet (poll
        ``wait_sockets`` and call again). The request's deadline counts from its send.

        Raises:
            BridgeError: no step or reset in flight. Plus everything ``step`` raises: a timeout
            once the deadline passed, PeerDisconnectedError as soon as the connection dropped.
        """
        pending = self._pending
        if pending is None or pending.command not in (protocol.STEP, protocol.RESET):
            raise BridgeError("recv_tick() without a step or reset in flight to {}"
                              .format(self.endpoint))
        body = self._await_reply(pending, block)
        return None if body is None else self._tick(body)

    @property
    def in_flight(self) -> bool:
        """True between a send and the receipt (or failure) of its reply."""
        return self._pending is not None

    @property
    def wait_sockets(self) -> Tuple[zmq.Socket, ...]:
        """The socket that becomes readable when the reply arrives: register it (POLLIN) with a
        zmq.Poller to wait on many clients at once. A dropped connection or a passed deadline is
        noticed by ``recv_tick(block=False)`` itself, so call it on every waiting client whenever
        a poll slice (say 100 ms) ends with nothing readable, as ``recv_tick`` itself polls the
        connection monitor between 50 ms slices. (Polling the monitor sockets too would double
        the sockets every poll looks at, on every reply.)"""
        if self.closed:
            return ()
        return (self._socket,)

    def snapshot(self) -> str:
        """Saves the world's full current state on the sim side and returns its opaque token.

        The token is valid in this session only; the sim keeps the newest ``info.max_snapshots``
        (taking one more drops the oldest).

        Raises:
            SnapshotUnsupportedError: the world cannot snapshot (hello said so; nothing is sent).
            RemoteSnapshotError: nothing to save yet (no reset). Plus everything ``step`` raises.
        """
        self._check_can_snapshot()
        reply = self._request(protocol.SNAPSHOT, {}, self.timeout)
        token = reply.get("token")
        if not isinstance(token, str):
            raise ProtocolError("malformed snapshot reply from {}: no token".format(self.endpoint))
        return token

    def restore(self, token: str) -> StepReply:
        """Puts the world back into the state saved under ``token`` and returns that moment's tick
        (the same frame, time, observation and measurements as when the snapshot was taken). The
        same actions then give byte-identical ticks. A token can be restored any number of times.

        Raises:
            SnapshotUnsupportedError: the world cannot snapshot (nothing is sent).
            RemoteSnapshotError: unknown token (dropped as the oldest, or from another session).
            Plus everything ``step`` raises.
        """
        self._check_can_snapshot()
        return self._tick(self._request(protocol.RESTORE, {"token": str(token)}, self.timeout))

    def ping(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Asks the server for its status without touching any session."""
        return self._request(protocol.PING, {}, self.timeout if timeout is None else timeout)

    def close(self) -> None:
        """Ends the session on the server (so it restores the world now) and frees sockets.

        Idempotent; never raises for an unreachable server.
        """
        self._close(graceful=True)

    def _close(self, graceful: bool) -> None:
        if self.closed:
            return
        self.closed = True
        heartbeat_stopped = self._stop_heartbeat()
        try:
            if graceful and self._session is not None:
                self._request(protocol.CLOSE, {}, min(self.timeout, 2.0))
        except BridgeError as e:
            logger.debug("close: server did not acknowledge (%s)", e)
        finally:
            self._pending = None
            self._end_session_locally()
            self._monitor.close(self._socket)
            self._socket.close(linger=0)
            # term() waits for every socket of the context; the heartbeat thread's socket is gone
            # only if the thread ended (at interpreter exit daemon threads never do): never hang.
            if graceful and heartbeat_stopped:
                self._context.term()

    def __enter__(self) -> "BridgeClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:  # safety net only: no request, nothing that could block
        if not getattr(self, "closed", True):
            try:
                self._close(graceful=False)
            except Exception:
                pass

    # -- internals -------------------------------------------------------------------------------

    def _check_version(self, version: Tuple[int, ...]) -> None:
        ours = PROTOCOL_VERSION
        if version[0] != ours[0]:
            raise VersionMismatchError(protocol.version_string(ours), protocol.version_string(version))
        if version[1] != ours[1]:
            warnings.warn("sim side at {} speaks protocol {} and this client {}: minor versions "
                          "differ, newer features may be unavailable".format(
                              self.endpoint, protocol.version_string(version),
                              protocol.version_string(ours)), ProtocolVersionWarning)

    def _fit_timeout(self, budget: Any) -> Optional[float]:
        """Makes the request timeout exceed the sim side's step budget by a margin.

        Returns the budget (None when the server announces none: the timeout stays as asked).

        Raises:
            ProtocolError: the budget is not a positive number.
            StepBudgetError: the timeout is too short and ``adapt_timeout`` is False.
        """
        self.timeout = self.requested_timeout
        if budget is None:
            return None
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not (
                0 < budget < float("inf")):
            raise ProtocolError("hello reply from {}: step_budget_seconds must be a positive "
                                "number, got {!r}".format(self.endpoint, budget))
        needed = float(budget) + protocol.step_budget_margin(float(budget))
        if needed > self.timeout:
            if not self.adapt_timeout:
                raise StepBudgetError(
                    "the sim side at {} allows itself up to {:g} s per step (its CARLA timeout) but "
                    "this client waits only {:g} s: raise the client's timeout to at least {:g} s, "
                    "lower the sim side's --carla-timeout, or let the client adapt "
                    "(adapt_timeout=True)".format(self.endpoint, budget, self.timeout, needed))
            logger.info("the sim side at %s allows itself up to %g s per step: request timeout "
                        "raised from %g s to %g s", self.endpoint, budget, self.timeout, needed)
            self.timeout = needed
        return float(budget)

    def _check_can_snapshot(self) -> None:
        if self.info is None or self._session is None:
            raise SessionError("no session with {}: call hello() first".format(self.endpoint))
        if not self.info.can_snapshot:
            raise SnapshotUnsupportedError(
                "the {} world at {} (protocol {}) cannot snapshot: its hello announced no snapshot "
                "capability{}".format(self.info.sim_name, self.endpoint, self.info.protocol,
                                      " (protocol 1.0 has no snapshots)"
                                      if self.info.protocol == "1.0" else ""))

    def _attach_shm(self, offer: Dict[str, Any]) -> bool:
        try:
            self._shm = ShmReader(str(offer["path"]), str(offer["token"]), int(offer["size"]))
            return True
        except (BridgeError, KeyError, TypeError, ValueError) as e:
            logger.info("shared memory offered by %s is not usable here (%s); using TCP frames",
                        self.endpoint, e)
            return False

    def _stop_heartbeat(self) -> bool:
        """Stops the heartbeat thread; False if it did not end in time."""
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is None:
            return True
        heartbeat.stopped.set()
        heartbeat.join(timeout=2.0)
        return not heartbeat.is_alive()

    def _end_session_locally(self) -> None:
        self._stop_heartbeat()
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        self._session = None

    def _request(self, command: str, body: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        self._send(command, body, timeout)
        result = self._await_reply(self._pending, block=True)
        assert result is not None  # a blocking wait returns the reply or raises
        return result

    def _send(self, command: str, body: Dict[str, Any], timeout: float) -> None:
        if self.closed and command != protocol.CLOSE:
            raise BridgeError("this BridgeClient is closed")
        if command in protocol.SESSION_COMMANDS and self._session is None:
            raise SessionError("no session with {}: call hello() first".format(self.endpoint))
        if self._pending is not None:
            if command in (protocol.STEP, protocol.RESET):  # lockstep: one tick at a time
                raise BridgeError("{} to {} while {} #{} is still in flight: receive its reply "
                                  "first".format(command, self.endpoint, self._pending.command,
                                                 self._pending.seq))
            # hello/ping/close abandon it; its late reply is dropped by sequence number
            logger.debug("abandoning %s #%d for %s", self._pending.command, self._pending.seq,
                         command)
            self._pending = None
        self._seq += 1
        seq = self._seq
        frames = self._encoder.encode({"seq": seq, "cmd": command, "session": self._session,
                                       "shm": self._shm is not None, "body": body})
        self._monitor.poll_disconnected()  # a drop between two requests counts if it is not back
        sent_while_down = self._monitor.lost
        started = time.monotonic()
        deadline = started + timeout
        try:
            send_frames(self._socket, frames, zmq.NOBLOCK)
        except zmq.Again:  # nothing sent yet: a DEALER's first frame is all or nothing
            self._wait_writable(command, seq, deadline)
            send_frames(self._socket, frames, zmq.NOBLOCK)
        self._pending = _Pending(command, seq, started, deadline, timeout, sent_while_down)

    def _await_reply(self, pending: _Pending, block: bool) -> Optional[Dict[str, Any]]:
        """The body of the reply to ``pending``; None if ``block`` is False and it is not here yet.

        Whatever happens, a reply, an error reply, a timeout or a dropped connection, ends the
        request: only a None return leaves it in flight.
        """
        try:
            reply = self._wait_for(pending, block)
        except BaseException:
            self._pending = None
            raise
        if reply is None:
            return None
        self._pending = None
        self.stats.record(pending.command, time.monotonic() - pending.started)
        if not reply.get("ok"):
            error = reply.get("error") or {}
            raise remote_error(str(error.get("code", "RemoteError")),
                               str(error.get("message", "")), str(error.get("traceback", "")))
        result = reply.get("body")
        return result if isinstance(result, dict) else {}

    def _wait_for(self, pending: _Pending, block: bool) -> Optional[Dict[str, Any]]:
        command, seq = pending.command, pending.seq
        while True:
            remaining = pending.deadline - time.monotonic()
            # Wait on the data socket alone, in slices; the monitor is looked at between slices.
            # (A two-socket zmq.Poller costs a few microseconds per request on the hot path; a
            # dropped connection is still noticed within one slice.)
            # A reply already here when the deadline passes still counts (a caller that polls
            # many clients may look late); only its absence is a timeout.
            wait = max(0.0, min(remaining, _LIVENESS_SLICE_SECONDS)) if block else 0
            if self._reply_poller.poll(wait * 1000):
                reply = self._receive(seq)
                if reply is None or reply.get("seq") != seq:
                    logger.debug("dropping stale reply %r while waiting for %d",
                                 None if reply is None else reply.get("seq"), seq)
                    continue
                return reply
            if self._monitor.poll_disconnected() and not self._handshake_failed():
                raise self._disconnected_error(pending, "while we waited for the reply to")
            if (pending.sent_while_down and self._monitor.lost
                    and time.monotonic() - pending.started >= _RECONNECT_GRACE_SECONDS):
                raise self._disconnected_error(pending, "and has not come back within {:.0f} s "
                                               "of".format(_RECONNECT_GRACE_SECONDS))
            if self._handshake_failed():
                raise self._handshake_error()
            if remaining <= 0:
                raise BridgeTimeoutError(self._timeout_message(command, seq, pending.timeout))
            if not block:
                return None

    def _disconnected_error(self, pending: _Pending, when: str) -> PeerDisconnectedError:
        hint = ("; or it requires CurveZMQ (--curve): pass curve=DIR with its keys"
                if self._monitor.handshake_failure is not None else "")
        return PeerDisconnectedError(
            "the sim side at {} dropped the connection {} {} #{}: carla_client probably crashed or "
            "was killed; check its log, then restart it{}".format(
                self.endpoint, when, pending.command, pending.seq, hint))

    def _handshake_failed(self) -> bool:
        """A handshake failure that means "no service here", not a connection dropped mid-way.

        Without CURVE, a failure without detail is just a connection that dropped during the
        handshake (the server restarting, or its memory guard); ZeroMQ reconnects by itself.
        """
        event = self._monitor.handshake_failure
        return event is not None and (self.curve is not None
                                      or event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

    def _handshake_error(self) -> BridgeError:
        event = self._monitor.handshake_failure
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            why = ("it refused our CURVE key: is {} among the client keys in the sim side's "
                   "--curve directory?".format(os.path.join(self.curve or "", "client.key")))
        elif self.curve is None:
            why = ("it probably requires CurveZMQ (carla_client --curve DIR): pass curve=DIR "
                   "(env.curve) with that directory's server.key and client.key_secret")
        else:  # a refusal can look like this too when the connection closes before its ERROR
            why = ("it refused our CURVE key (is {} among its client keys?), or it does not use "
                   "CurveZMQ, or its server key is not {}".format(
                       os.path.join(self.curve, "client.key"), os.path.join(self.curve, "server.key")))
        return CurveError("the ZeroMQ handshake with {} failed: {}".format(self.endpoint, why))

    def _wait_writable(self, command: str, seq: int, deadline: float) -> None:
        """Waits until the socket can send, in slices: a connection whose handshake failed (a CURVE
        refusal ends it for good) leaves nothing to send to, which the monitor tells at once."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BridgeTimeoutError(self._timeout_message(command, seq, 0))
            if self._socket.poll(min(remaining, _LIVENESS_SLICE_SECONDS) * 1000, zmq.POLLOUT):
                return
            self._monitor.poll_disconnected()
            if self._handshake_failed():
                raise self._handshake_error()

    def _receive(self, seq: int) -> Optional[Dict[str, Any]]:
        """The next reply, or None for a stale one that cannot even be decoded any more."""
        frames = self._socket.recv_multipart(copy=False)
        shm_reader = self._shm.read if self._shm is not None else None
        try:
            reply = decode(frames, self.max_message_bytes, shm_reader)
        except ProtocolError:
            if peek_seq(bytes(memoryview(frames[0]))) != seq:
                return None  # e.g. an old shared-memory reply from before a new hello
            raise
        if not isinstance(reply, dict):
            raise ProtocolError("reply from {} is not a map".format(self.endpoint))
        return reply

    def _timeout_message(self, command: str, seq: int, timeout: float) -> str:
        return ("no reply from {} to {} #{} within {:.1f} s. Is carla_client running and bound to "
                "that address? Did it crash (see its log)? Is the simulator stalled (a CARLA tick "
                "with many sensors can be slow: raise the timeout)?".format(
                    self.endpoint, command, seq, timeout))

    def _tick(self, body: Dict[str, Any]) -> StepReply:
        try:
            reply = StepReply(int(body["frame"]), float(body["sim_time"]), dict(body["observation"]),
                              dict(body["measurements"]), list(body["events"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError("malformed tick from {}: {}".format(self.endpoint, e)) from e
        if self._observation_layout:
            _check_shapes(self._observation_layout, reply.observation)
        if self.copy_arrays:
            reply = reply._replace(observation={k: np.array(v) for k, v in reply.observation.items()})
        return reply


def _check_shapes(layout: List[Tuple[str, np.dtype, Tuple[int, ...]]],
                  observation: Dict[str, Any]) -> None:
    """Cheap structural check of an observation against (name, dtype, shape) triples."""
    for name, dtype, shape in layout:
        value = observation.get(name)
        if not isinstance(value, np.ndarray):
            raise ProtocolError("observation field {!r} missing or not an array".format(name))
        if value.dtype != dtype or len(value.shape) != len(shape) or any(
                want not in (-1, got) for want, got in zip(shape, value.shape)):
            raise ProtocolError("observation field {!r}: expected {}{} but got {}{}".format(
                name, dtype, shape, value.dtype, value.shape))
