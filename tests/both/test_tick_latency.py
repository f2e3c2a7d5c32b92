"""The built-in world's --tick-latency-ms: a slow, GPU-bound CARLA tick emulated by sleeping.

Runs under Python 3.6 and 3.11: 3.6 syntax only.
"""
import time

import pytest

from bridge.errors import SpecError
from carla_client.__main__ import parse_args
from carla_client.backend import VehicleControl
from carla_client.builtin import BuiltinWorld
from carla_client.sensors import parse_sensors

STATE_ONLY = parse_sensors([{"name": "collision", "type": "sensor.other.collision"}])


def test_every_tick_lasts_at_least_the_latency_without_using_the_cpu():
    world = BuiltinWorld(sensors=STATE_ONLY, tick_latency=0.04)
    plain = BuiltinWorld(sensors=STATE_ONLY)
    wall, cpu = time.monotonic(), time.process_time()
    ticks = [world.reset(seed=1)] + [world.step(VehicleControl(throttle=0.5)) for _ in range(9)]
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert wall >= 10 * 0.04  # resets are ticks too (CARLA's reset ticks once)
    assert cpu < 0.5 * wall, "the latency must be slept, not spun"
    # the latency changes the wall clock only, never the simulation
    same = [plain.reset(seed=1)] + [plain.step(VehicleControl(throttle=0.5)) for _ in range(9)]
    assert [t.frame for t in ticks] == [t.frame for t in same]
    assert [t.measurements["speed"] for t in ticks] == [t.measurements["speed"] for t in same]


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
