"""A CARLA 0.8.4-compatible server on the built-in world (``python -m carla_client.carla084_server``).

It speaks the 0.8.4 protocol as the real server does: world port P (RequestNewEpisode ->
SceneDescription, EpisodeStart -> EpisodeReady), then stream port P+1 and control port P+2, which
accept a connection only from EpisodeReady until the next RequestNewEpisode. In synchronous mode
each frame waits up to ServerTimeOut for a control; when none comes it applies an all-zero control,
closes the control connection and runs freely, like the real server. In asynchronous mode frames
come at the tick rate in real time and the newest control counts. Frame numbers never restart.
One world client is served at a time; others wait in the listen backlog.
"""
import logging
import random
import select
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from google.protobuf.message import DecodeError

from bridge.errors import SpecError
from bridge.schema import VehicleControl
from carla_client.builtin import BuiltinWorld
from carla_client.carla084 import schema
from carla_client.carla084.episode import MAP_NAME, EpisodeWorld, read_settings
from carla_client.carla084.errors import (LegacyConnectionError, LegacyProtocolError,
                                          LegacyTimeoutError)
from carla_client.carla084.framing import FramedSocket

logger = logging.getLogger(__name__)

#: seconds between checks of the stop flag while waiting.
SLICE = 0.2
ZERO_CONTROL = VehicleControl()
_CLOSED = object()  # the client closed its control connection


class _Stopped(Exception):
    """Raised inside the serve loop when the stop flag is set."""


class _NewRequest(Exception):
    """The world client sent a message mid-episode: the next RequestNewEpisode."""

    def __init__(self, message: bytes) -> None:
        Exception.__init__(self, "new episode requested")
        self.message = message


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LegacyConnectionError("cannot listen on {}:{}: {} (another server there?)".format(
            host, port, e)) from e
    sock.listen(4)
    return sock


def _clip(value: float, low: float, high: float) -> float:
    """``value`` within [low, high]; NaN -> 0."""
    return (low if value < low else high if value > high else value) if value == value else 0.0


def _to_control(message: Any) -> VehicleControl:
    """A Control message as our VehicleControl, values clipped to their ranges (NaN -> 0)."""
    return VehicleControl(_clip(message.throttle, 0.0, 1.0), _clip(message.steer, -1.0, 1.0),
                          _clip(message.brake, 0.0, 1.0), bool(message.hand_brake),
                          bool(message.reverse))


class Carla084Server(object):
    """Serves the built-in world over the CARLA 0.8.4 protocol.

    Args:
        port: the world port P (the stream and control ports are P+1 and P+2).
        seed: the world seed (the circuit) and the seed of the server's own randomness.
        host: the address to listen on (loopback unless told otherwise).
        server_timeout: ServerTimeOut in seconds (0.8.4 reads it from the server's own settings).
        tick_seconds: simulated seconds per frame (``-benchmark -fps=20`` is 0.05).
        should_stop: polled while waiting; serve() returns soon after it turns true.
    """

    def __init__(self, port: int, seed: int = 0, host: str = "127.0.0.1",
                 server_timeout: float = 10.0, tick_seconds: float = 0.05,
                 should_stop: Optional[Callable[[], bool]] = None) -> None:
        self.host, self.port, self.seed = host, int(port), int(seed)
        self.server_timeout = float(server_timeout)
        self.tick_seconds = float(tick_seconds)
        self._should_stop = should_stop or (lambda: False)
        self._rng = random.Random(self.seed)
        self._worlds = {}  # type: Dict[Any, BuiltinWorld]
        self.frame_number = 0
        self.episodes = 0
        self._world_listener = _listen(host, self.port)  # type: Optional[socket.socket]
        self._episode_listeners = []  # type: List[socket.socket]
        self._episode_sockets = []  # type: List[FramedSocket]

    # -- waiting ------------------------------------------------------------------------------------

    def _select(self, readable: Sequence[Any], timeout: Optional[float]) -> List[Any]:
        """select() in slices, checking the stop flag; [] on timeout (None: wait forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._should_stop():
                raise _Stopped()
            wait = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
            if wait <= 0:
                return []
            ready, _, _ = select.select(list(readable), [], [], wait)
            if ready:
                return ready

    def _world_message(self, world: FramedSocket, timeout: Optional[float]) -> Optional[bytes]:
        """The next world-port message (None on timeout); LegacyConnectionError when the client left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = world.poll()
            if message is not None:
                return message
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._select([world], remaining)

    # -- serving --------------------------------------------------------------------------------------

    def serve(self) -> None:
        """Serves world clients one after another until ``should_stop`` turns true."""
        listener = self._world_listener
        if listener is None:
            raise LegacyConnectionError("the server is closed")
        try:
            while True:
                self._select([listener], None)
                conn, address = listener.accept()
                logger.info("world client %s:%s connected", *address[:2])
                world = FramedSocket(conn, "world client {}:{}".format(*address[:2]))
                try:
                    self._serve_client(world)
                except (LegacyConnectionError, LegacyTimeoutError) as e:
                    logger.info("world client %s:%s left: %s", address[0], address[1], e)
                except LegacyProtocolError as e:  # e.g. an oversized message: drop that client only
                    logger.warning("world client %s:%s dropped: %s", address[0], address[1], e)
                finally:
                    world.close()
                    self._end_episode()
        except _Stopped:
            logger.info("stopping")

    def _serve_client(self, world: FramedSocket) -> None:
        message = self._world_message(world, None)
        while True:
            request = schema.RequestNewEpisode()
            try:
                request.ParseFromString(message or b"")
            except DecodeError as e:
                logger.warning("unparsable RequestNewEpisode (%s): using default settings", e)
            self._end_episode()
            try:
                settings = read_settings(request.ini_file)
                episode = EpisodeWorld(settings, self.seed, self.tick_seconds, self._rng,
                                       self._worlds)  # type: Optional[EpisodeWorld]
                scene = episode.scene()
            except SpecError as e:
                logger.warning("cannot start an episode with these settings: %s", e)
                episode = None
                scene = schema.SceneDescription(map_name=MAP_NAME)
            world.send(scene.SerializeToString(), self.server_timeout)
            # Lenient like 0.8.4: whatever comes next is read as the EpisodeStart.
            start = schema.EpisodeStart()
            try:
                start.ParseFromString(self._world_message(world, None) or b"")
            except DecodeError:
                pass
            if episode is None:
                world.send(schema.EpisodeReady(ready=False).SerializeToString(),
                           self.server_timeout)
                message = self._world_message(world, None)
                continue
            episode.start(int(start.player_start_spot_index))
            self._episode_listeners = [_listen(self.host, self.port + 1),
                                       _listen(self.host, self.port + 2)]
            world.send(schema.EpisodeReady(ready=True).SerializeToString(), self.server_timeout)
            self.episodes += 1
            logger.info("episode %d: start spot %d, %s mode, %d camera(s)", self.episodes,
                        start.player_start_spot_index,
                        "synchronous" if settings.synchronous else "asynchronous",
                        len(settings.cameras))
            try:
                self._run_episode(world, episode)
            except _NewRequest as new:
                message = new.message

    def _accept_episode_connections(self, world: FramedSocket) -> List[Optional[FramedSocket]]:
        """Accepts the stream and control connections, watching the world port meanwhile."""
        names = ("stream", "control")
        accepted = [None, None]  # type: List[Optional[FramedSocket]]
        deadline = time.monotonic() + self.server_timeout
        while None in accepted:
            waiting = [l for l, a in zip(self._episode_listeners, accepted) if a is None]
            ready = self._select(waiting + [world], deadline - time.monotonic())
            if not ready:
                logger.warning("the client did not connect the %s port within ServerTimeOut",
                               " and ".join(n for n, a in zip(names, accepted) if a is None))
                break
            if world in ready:
                self._check_world(world)
            for index, listener in enumerate(self._episode_listeners):
                if listener in ready and accepted[index] is None:
                    conn, _ = listener.accept()
                    accepted[index] = FramedSocket(conn, names[index])
                    self._episode_sockets.append(accepted[index])
        return accepted

    def _check_world(self, world: FramedSocket) -> None:
        message = world.poll()
        if message is not None:
            raise _NewRequest(message)

    def _run_episode(self, world: FramedSocket, episode: EpisodeWorld) -> None:
        stream, control = self._accept_episode_connections(world)
        synchronous = episode.settings.synchronous and control is not None
        applied = ZERO_CONTROL
        next_frame = time.monotonic()
        while True:
            episode.step(applied)
            self.frame_number += 1
            if stream is not None:
                stream = self._send_frame(stream, episode.messages(self.frame_number))
            if synchronous and control is not None:  # _wait_control watches the world port
                newest = self._wait_control(world, control)
                if newest is _CLOSED:
                    logger.info("the client closed the control connection: running freely")
                    control.close()
                    control, synchronous, applied = None, False, ZERO_CONTROL
                    next_frame = time.monotonic()
                elif newest is None:
                    logger.warning(
                        "no control within ServerTimeOut (%g s) after frame %d: applying an all-zero "
                        "control, closing the control connection and running freely (start the "
                        "server with a larger --server-timeout if the client pauses that long)",
                        self.server_timeout, self.frame_number)
                    control.close()
                    control, synchronous, applied = None, False, ZERO_CONTROL
                    next_frame = time.monotonic()
                else:
                    applied = newest
                continue
            self._check_world(world)
            next_frame += self.tick_seconds  # asynchronous: frames at the tick rate, real time
            ready = self._select([world], max(0.0, next_frame - time.monotonic()))
            if ready:
                self._check_world(world)
            if control is not None:
                try:
                    applied = self._newest(control) or applied
                except LegacyConnectionError:
                    control.close()
                    control = None

    def _send_frame(self, stream: FramedSocket, messages: List[bytes]) -> Optional[FramedSocket]:
        try:
            stream.send_many(messages + [b""], self.server_timeout)  # the empty message ends a frame
            return stream
        except LegacyTimeoutError:
            logger.warning("a stream write blocked for ServerTimeOut (%g s): closing the stream "
                           "connection", self.server_timeout)
        except LegacyConnectionError as e:
            logger.info("the stream connection closed: %s", e)
        stream.close()
        return None

    def _newest(self, control: FramedSocket, read: bool = True) -> Optional[VehicleControl]:
        """The newest complete Control received (None if none); older ones are dropped.

        ``read``: first read what has arrived on the socket (never blocking); otherwise look only
        at what earlier reads left in the buffer (no system call).
        """
        newest = None
        message = control.poll() if read else control.buffered()
        while message is not None:
            parsed = schema.Control()
            try:
                parsed.ParseFromString(message)
                newest = _to_control(parsed)
            except DecodeError:
                logger.warning("dropping an unparsable Control message")
            message = control.buffered()
        return newest

    def _wait_control(self, world: FramedSocket, control: FramedSocket) -> Any:
        """This frame's control: a VehicleControl, None after ServerTimeOut, or _CLOSED.

        A message on the world port meanwhile (the next RequestNewEpisode) raises _NewRequest.
        """
        try:
            newest = self._newest(control, read=False)
        except LegacyConnectionError:
            return _CLOSED
        if newest is not None:  # it came ahead of this frame: no wait, but look at the world port
            self._check_world(world)
            return newest
        deadline = time.monotonic() + self.server_timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready = self._select([control, world], remaining)
            if world in ready:
                self._check_world(world)
            if control in ready:
                try:
                    newest = self._newest(control)
                except LegacyConnectionError:
                    return _CLOSED
                if newest is not None:
                    return newest

    def _end_episode(self) -> None:
        """Closes the stream and control listeners and connections (a new request does)."""
        for sock in self._episode_sockets:
            sock.close()
        for listener in self._episode_listeners:
            listener.close()
        self._episode_sockets, self._episode_listeners = [], []

    def close(self) -> None:
        """Closes every socket. Idempotent."""
        self._end_episode()
        if self._world_listener is not None:
            self._world_listener.close()
            self._world_listener = None

    def __enter__(self) -> "Carla084Server":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
