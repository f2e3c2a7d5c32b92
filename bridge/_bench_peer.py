"""Serving side of bridge.bench: a raw pyzmq REP peer and a real BridgeServer, one at a time, on demand.

Started by ``python -m bridge.bench`` as ``<python> -m bridge._bench_peer --control ENDPOINT`` (any
interpreter that can import ``bridge``, e.g. the Python 3.6 sim venv). It connects a PAIR socket to
the benchmark's control endpoint, announces itself, then obeys control messages (msgpack maps):

* ``{"cmd": "serve", "kind": "raw" | "bridge" | "bridge-curve", "payload": NAME, "curve": DIR}``:
  answers ``{"ok": True, "endpoint": ...}``, serves one measurement on that endpoint, then sends ``{"done": True, ...}``.
  A raw measurement ends when the client sends ``STOP_ACTION``; a bridge one when the client's
  ``close`` ends the session (or the session times out).
* ``{"cmd": "exit"}``: closes everything and exits.

Both servers send the same pre-built array every step, so the benchmark measures the transport and
not the allocation of a new frame.
"""
import argparse
import logging
import os
import re
import sys
import time
from typing import Any, Dict, Optional, Tuple

import msgpack
import numpy as np
import zmq

from bridge.server import BridgeServer, SessionHandler
from bridge.spec import FieldSpec, WorldSpec

logger = logging.getLogger(__name__)

#: payload names used by default, smallest first ("state" has no array at all).
DEFAULT_PAYLOADS = ("state", "84x84x3", "800x600x4", "1280x720x4")
STATE = "state"
_IMAGE = re.compile(r"^(\d+)x(\d+)x(\d+)$")

#: the measurements both servers send each tick (about 100 bytes of msgpack with their keys).
MEASUREMENTS = {"speed": 8.25, "lateral_offset": -0.31, "heading_error": 0.042,
                "route_distance": 118.5, "route_completion": 0.137, "off_road": False}
#: the action field names; the client sends three floats, as in ../shared/TRANSPORT_FACTS.md.
ACTION_FIELDS = ("throttle", "steer", "brake")
#: what a raw client sends instead of an action to end a measurement.
STOP_ACTION = b"STOP"
#: seconds without any request after which a serving peer gives up on its client.
IDLE_SECONDS = 60.0
TICK_SECONDS = 0.05


def payload_shape(name: str) -> Optional[Tuple[int, int, int]]:
    """``"WxHxC"`` -> ``(H, W, C)`` (a camera image, row-major like carla.Image); "state" -> None.

    Raises:
        ValueError: not "state" and not of the form WxHxC.
    """
    if name == STATE:
        return None
    match = _IMAGE.match(name)
    if not match:
        raise ValueError("bad payload {!r}: use 'state' or WIDTHxHEIGHTxCHANNELS, e.g. "
                         "1280x720x4".format(name))
    width, height, channels = (int(g) for g in match.groups())
    return height, width, channels


def build_array(name: str) -> Optional[np.ndarray]:
    """The fixed uint8 image served for payload ``name`` (same bytes on every interpreter)."""
    shape = payload_shape(name)
    if shape is None:
        return None
    count = shape[0] * shape[1] * shape[2]
    # a cheap deterministic pattern, identical under numpy 1.19 and 2.x (no RNG version drift)
    return (np.arange(count, dtype=np.uint32) * 2654435761 >> 13).astype(np.uint8).reshape(shape)


def world_spec(name: str) -> WorldSpec:
    shape = payload_shape(name)
    observation = () if shape is None else (FieldSpec("camera", "uint8", shape, 0, 255),)
    measurements = tuple(
        FieldSpec(key, "bool" if isinstance(value, bool) else "float64")
        for key, value in MEASUREMENTS.items())
    action = (FieldSpec("throttle", "float32", (), 0.0, 1.0),
              FieldSpec("steer", "float32", (), -1.0, 1.0),
              FieldSpec("brake", "float32", (), 0.0, 1.0))
    return WorldSpec(observation, measurements, action, TICK_SECONDS)


class FixedWorld(SessionHandler):
    """A world that answers every reset and step with the same pre-built observation array."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.array = build_array(name)
        self.frame = 0
        self.session_open = False
        self.sessions_ended = 0

    def describe(self) -> Dict[str, Any]:
        return {"name": "bench-" + self.name, "version": "0", "spec": world_spec(self.name)}

    def open_session(self) -> None:
        self.session_open = True

    def reset(self, seed: Optional[int], options: Dict[str, Any]) -> Dict[str, Any]:
        self.frame = 0
        return self._tick()

    def step(self, action: Dict[str, np.ndarray]) -> Dict[str, Any]:
        self.frame += 1
        return self._tick()

    def close_session(self) -> None:
        if self.session_open:
            self.session_open = False
            self.sessions_ended += 1

    def _tick(self) -> Dict[str, Any]:
        observation = {} if self.array is None else {"camera": self.array}
        return {"frame": self.frame, "sim_time": self.frame * TICK_SECONDS,
                "observation": observation, "measurements": MEASUREMENTS, "events": []}


def raw_header(name: str, array: Optional[np.ndarray], frame: int) -> bytes:
    """The raw peer's msgpack header: the same tick fields the bridge sends, plus the array's layout."""
    header = {"frame": frame, "sim_time": frame * TICK_SECONDS, "measurements": MEASUREMENTS,
              "events": []}
    if array is not None:
        header["camera"] = [array.dtype.str, list(array.shape)]
    return msgpack.packb(header, use_bin_type=True)


class RawPeer(object):
    """Plain pyzmq REP socket: msgpack header + the array as a zero-copy frame (the baseline)."""

    def __init__(self, context: zmq.Context, name: str) -> None:
        self.name = name
        self.array = build_array(name)
        self.socket = context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVTIMEO, int(IDLE_SECONDS * 1000))  # recv with a timeout
        self.socket.bind("tcp://127.0.0.1:*")
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def serve(self) -> int:
        """Answers requests until STOP_ACTION; returns how many steps it served."""
        sock, array, frame = self.socket, self.array, 0
        while True:
            try:
                request = sock.recv()
            except zmq.Again:
                logger.warning("raw client silent for %.0f s: giving up", IDLE_SECONDS)
                return frame
            if request == STOP_ACTION:
                sock.send(b"")
                return frame
            msgpack.unpackb(request, raw=False)  # decode the action, as a real peer would
            frame += 1
            header = raw_header(self.name, array, frame)
            if array is None:
                sock.send(header)
            else:
                sock.send_multipart([header, array], copy=False)

    def close(self) -> None:
        self.socket.close(linger=0)


class BridgePeer(object):
    """A real BridgeServer serving a FixedWorld for one payload."""

    def __init__(self, name: str, curve: Optional[str] = None) -> None:
        self.world = FixedWorld(name)
        self.server = BridgeServer(self.world, bind="tcp://127.0.0.1:*", curve=curve)
        self.endpoint = self.server.endpoint

    def serve(self) -> int:
        """Serves until the client's session ends; returns how many requests it handled."""
        ended_before = self.world.sessions_ended
        served_before = self.server.requests_served
        state = {"served": served_before, "heard": time.monotonic()}

        def should_stop() -> bool:
            if self.world.sessions_ended > ended_before:
                return True
            if self.server.requests_served != state["served"]:
                state["served"], state["heard"] = self.server.requests_served, time.monotonic()
            elif time.monotonic() - state["heard"] > IDLE_SECONDS:
                logger.warning("bridge client silent for %.0f s: giving up", IDLE_SECONDS)
                return True
            return False

        self.server.serve(should_stop, poll_seconds=0.5)
        return self.server.requests_served - served_before

    def close(self) -> None:
        self.server.close()


def run(control_endpoint: str, parent_pid: int) -> int:
    context = zmq.Context()
    control = context.socket(zmq.PAIR)
    control.setsockopt(zmq.LINGER, 0)
    control.connect(control_endpoint)
    peers = {}  # type: Dict[Tuple[str, str], Any]
    try:
        control.send(msgpack.packb({
            "ready": True, "pid": os.getpid(), "python": sys.version.split()[0],
            "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
            "msgpack": ".".join(map(str, msgpack.version)), "numpy": np.__version__,
        }, use_bin_type=True))
        while True:
            if not control.poll(1000):
                if os.getppid() != parent_pid:  # the benchmark died: do not linger
                    logger.warning("benchmark process %d is gone: exiting", parent_pid)
                    return 1
                continue
            command = msgpack.unpackb(control.recv(), raw=False)
            if command.get("cmd") == "exit":
                return 0
            if command.get("cmd") != "serve":
                control.send(msgpack.packb({"ok": False, "error": "unknown command {!r}".format(
                    command)}, use_bin_type=True))
                continue
            key = (str(command.get("kind")), str(command.get("payload")))
            try:
                if key not in peers:
                    if key[0] == "raw":
                        peers[key] = RawPeer(context, key[1])
                    elif key[0] == "bridge":
                        peers[key] = BridgePeer(key[1])
                    elif key[0] == "bridge-curve":
                        peers[key] = BridgePeer(key[1], curve=str(command.get("curve")))
                    else:
                        raise ValueError("unknown kind {!r}".format(key[0]))
                peer = peers[key]
            except Exception as e:  # report to the benchmark instead of dying silently
                logger.exception("cannot serve %s", key)
                control.send(msgpack.packb({"ok": False, "error": "{}: {}".format(
                    type(e).__name__, e)}, use_bin_type=True))
                continue
            control.send(msgpack.packb({"ok": True, "endpoint": peer.endpoint}, use_bin_type=True))
            served = peer.serve()
            control.send(msgpack.packb({"done": True, "served": served}, use_bin_type=True))
    finally:
        for peer in peers.values():
            peer.close()
        control.close(linger=0)
        context.term()


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control", required=True, metavar="ENDPOINT",
                        help="the benchmark's control endpoint to connect to")
    parser.add_argument("--parent-pid", type=int, default=os.getppid(), metavar="PID",
                        help="exit when this process is gone (default: the parent process)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="bench peer: %(levelname)s %(message)s")
    return run(args.control, args.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
