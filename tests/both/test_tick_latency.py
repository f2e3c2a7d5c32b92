"""The built-in world's --tick-latency-ms: a slow, GPU-bound CARLA tick emulated by sleeping.

Served, every reset and step lasts at least the latency from the arrival of its request to the
departure of its reply (bridge.server sleeps what the work leaves). Runs under Python 3.6 and 3.11:
3.6 syntax only.
"""
import time

import numpy as np
import pytest

from bridge.client import BridgeClient
from bridge.errors import SpecError
from bridge.server import SessionHandler
from bridge.spec import FieldSpec, WorldSpec
from carla_client.__main__ import parse_args
from carla_client.backend import VehicleControl
from carla_client.builtin import BuiltinWorld
from carla_client.sensors import parse_sensors
from carla_client.serve import WorldSessionHandler
from tests.peers.counting_peer import RunningServer

STATE_ONLY = parse_sensors([{"name": "collision", "type": "sensor.other.collision"}])
ACTION = {"throttle": 0.5, "steer": 0.0, "brake": 0.0, "hand_brake": False, "reverse": False}


@pytest.fixture
def served():
    running = []

    def start(handler):
        running.append(RunningServer(handler))
        return running[-1]

    yield start
    for server in running:
        server.close()


def test_every_served_tick_lasts_at_least_the_latency_without_using_the_cpu(served):
    world = BuiltinWorld(sensors=STATE_ONLY, tick_latency=0.04)
    server = served(WorldSessionHandler(world))
    assert server.server.tick_latency == 0.04
    with BridgeClient(server.endpoint, timeout=5.0, heartbeat_seconds=0) as client:
        client.hello()
        wall, cpu = time.monotonic(), time.process_time()  # both sides live in this process
        round_trips, ticks = [], []
        for index in range(10):
            started = time.monotonic()
            ticks.append(client.reset(seed=1) if index == 0 else client.step(ACTION))
            round_trips.append(time.monotonic() - started)
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert min(round_trips) >= 0.04  # resets are ticks too (CARLA's reset ticks once)
    assert cpu < 0.5 * wall, "the latency must be slept, not spun"
    # the latency changes the wall clock only, never the simulation
    plain = BuiltinWorld(sensors=STATE_ONLY)
    same = [plain.reset(seed=1)] + [plain.step(VehicleControl(throttle=0.5)) for _ in range(9)]
    assert [t.frame for t in ticks] == [t.frame for t in same]
    assert [t.measurements["speed"] for t in ticks] == [t.measurements["speed"] for t in same]


class _SlowHandler(SessionHandler):
    """Each step works (sleeps) ``work`` seconds; the served tick latency is ``latency``."""

    def __init__(self, work, latency):
        self.work, self.latency = work, latency

    def describe(self):
        spec = WorldSpec((FieldSpec("image", "uint8", (2, 2, 4)),), (FieldSpec("speed", "float32"),),
                         (FieldSpec("throttle", "float32", (), 0.0, 1.0),), 0.05)
        return {"name": "slow", "version": "1", "spec": spec, "tick_latency_seconds": self.latency}

    def reset(self, seed, options):
        return self.step({})

    def step(self, action):
        time.sleep(self.work)
        return {"frame": 1, "sim_time": 0.05, "observation": {"image": np.zeros((2, 2, 4), np.uint8)},
                "measurements": {"speed": 0.0}, "events": []}


def test_the_latency_covers_the_work_instead_of_adding_to_it(served):
    """A tick that works 40 ms with a latency of 60 ms lasts 60 ms, not 100 ms: a GPU-bound tick
    overlaps the sim side's CPU work (decoding, the world, encoding) with rendering."""
    server = served(_SlowHandler(work=0.04, latency=0.06))
    with BridgeClient(server.endpoint, timeout=5.0, heartbeat_seconds=0) as client:
        client.hello()
        client.reset()
        started = time.monotonic()
        for _ in range(10):
            client.step({"throttle": 0.5})
        elapsed = time.monotonic() - started
    assert 10 * 0.06 <= elapsed < 10 * 0.09  # 1.0 s if latency and work added up


def test_a_tick_longer_than_the_heartbeat_timeout_does_not_end_the_session(served):
    """The server sleeps the latency after the handler: that time is its own, not the trainer's
    silence (heartbeats arriving meanwhile wait in the queue)."""
    server = served(_SlowHandler(work=0.0, latency=0.7))
    with BridgeClient(server.endpoint, timeout=5.0, heartbeat_seconds=0.1) as client:
        client.hello()
        client.reset()
        for _ in range(2):
            client.step({"throttle": 0.5})  # a SessionError if the session had expired
        assert server.server.session is not None


def test_error_replies_are_not_held(served):
    server = served(_SlowHandler(work=0.0, latency=2.0))
    with BridgeClient(server.endpoint, timeout=5.0, heartbeat_seconds=0) as client:
        client.hello()
        started = time.monotonic()
        with pytest.raises(SpecError):
            client.step({"throttle": float("nan")})
        assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("latency", [-0.01, float("nan"), 11.0])
def test_bad_latencies_are_refused(latency):
    with pytest.raises(SpecError, match="tick_latency"):
        BuiltinWorld(sensors=STATE_ONLY, tick_latency=latency)


def test_the_command_line_option():
    assert parse_args(["--tick-latency-ms", "50"]).tick_latency_ms == 50.0
    assert parse_args([]).tick_latency_ms == 0.0
    for argv in (["--tick-latency-ms", "-1"], ["--world", "carla", "--tick-latency-ms", "50"]):
        with pytest.raises(SystemExit):
            parse_args(argv)
