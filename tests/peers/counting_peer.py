"""A tiny sim side for bridge tests: frame numbers you can check, optional slowness, any interpreter.

Run as ``python -m tests.peers.counting_peer --bind tcp://127.0.0.1:PORT [--step-delay S]`` with the
repo root on PYTHONPATH. Each observation encodes its frame number so a test can verify that no frame
was skipped, duplicated or mixed up; the ``echo`` measurement returns the action's throttle.
"""
import argparse
import logging
import signal
import sys
import threading
import time

import numpy as np

from bridge.server import BridgeServer, SessionHandler
from bridge.spec import FieldSpec, WorldSpec

ACTION = (FieldSpec("throttle", "float32", (), 0.0, 1.0), FieldSpec("steer", "float32", (), -1.0, 1.0))


class CountingHandler(SessionHandler):
    def __init__(self, height=8, width=8, step_delay=0.0):
        self.shape = (height, width, 4)
        self.step_delay = step_delay
        self.frame = 0
        self.sessions_opened = 0
        self.sessions_closed = 0

    def describe(self):
        spec = WorldSpec((FieldSpec("image", "uint8", self.shape, 0, 255),),
                         (FieldSpec("echo", "float64", ()),), ACTION, 0.05)
        return {"name": "counting", "version": "1", "spec": spec}

    def open_session(self):
        self.sessions_opened += 1

    def close_session(self):
        self.sessions_closed += 1

    def reset(self, seed, options):
        self.frame = 1000 * (seed or 0)
        return self._tick(0.0)

    def step(self, action):
        if self.step_delay:
            time.sleep(self.step_delay)
        self.frame += 1
        return self._tick(float(action["throttle"]))

    def _tick(self, echo):
        image = np.empty(self.shape, np.uint8)
        image[...] = np.frombuffer(np.int64(self.frame).tobytes(), np.uint8)[:4]
        return {"frame": self.frame, "sim_time": self.frame * 0.05, "observation": {"image": image},
                "measurements": {"echo": echo}, "events": [{"type": "tick", "frame": self.frame}]}


class RunningServer(object):
    """A BridgeServer serving in a thread of this process, on a free loopback port."""

    def __init__(self, handler, **options):
        self.handler = handler
        self.server = BridgeServer(handler, bind="tcp://127.0.0.1:0", **options)
        self.endpoint = self.server.endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.server.serve,
                                        args=(self._stop.is_set, 0.02), daemon=True)
        self._thread.start()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "server thread did not stop"
        self.server.close()


def frame_of(image):
    """Decodes the frame number a CountingHandler wrote into an image."""
    return int(np.frombuffer(bytes(image.reshape(-1)[:4]) + b"\0" * 4, np.int64)[0])


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--height", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--memory-budget", type=int, default=None, metavar="MB")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
    handler = CountingHandler(args.height, args.width, args.step_delay)
    options = {} if args.memory_budget is None else {"memory_budget": args.memory_budget << 20}
    with BridgeServer(handler, bind=args.bind, **options) as server:
        print("ready {} {}".format(server.endpoint, sys.version.split()[0]), flush=True)
        server.serve(should_stop=lambda: bool(stopping))
    return 0


if __name__ == "__main__":
    sys.exit(main())
