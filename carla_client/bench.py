"""Measures the built-in world's tick rate: ``python -m carla_client.bench [--width W --height H]``.

Each configuration is driven by the scripted pure-pursuit driver; its controls are recorded first
and then replayed under the timer, so the figures count ``BuiltinWorld.step`` alone (physics, route
projection, events and rendering), not the driver. Pin it to one core for comparable numbers:
``taskset -c 0 python -m carla_client.bench``.
"""
import argparse
import json
import platform
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from carla_client.builtin import BuiltinWorld, PurePursuit
from carla_client.sensors import (CAMERA_DEPTH, CAMERA_RGB, CAMERA_SEMANTIC, COLLISION,
                                  LANE_INVASION, SensorConfig, parse_sensors)

EVENT_SENSORS = [{"name": "collision", "type": COLLISION},
                 {"name": "lane_invasion", "type": LANE_INVASION}]


def configurations(width: int, height: int, extra: bool) -> Dict[str, Sequence[SensorConfig]]:
    """Named sensor sets: state only, a chase camera of the given size (and others if asked)."""
    def camera(kind: str) -> List[Dict[str, Any]]:
        return [{"name": "camera", "type": kind, "view": "chase", "width": width, "height": height,
                 "fov": 90}]

    configs = {
        "state": parse_sensors(EVENT_SENSORS),
        "rgb_{}x{}".format(width, height): parse_sensors(camera(CAMERA_RGB) + EVENT_SENSORS),
    }
    if extra:
        configs["semantic_{}x{}".format(width, height)] = parse_sensors(
            camera(CAMERA_SEMANTIC) + EVENT_SENSORS)
        configs["depth_{}x{}".format(width, height)] = parse_sensors(
            camera(CAMERA_DEPTH) + EVENT_SENSORS)
    return configs


def measure(sensors: Sequence[SensorConfig], ticks: int, seed: int, npc_vehicles: int
            ) -> Dict[str, float]:
    """Builds a world, records ``ticks`` pure-pursuit controls, replays them under the timer."""
    started = time.perf_counter()
    world = BuiltinWorld(sensors=sensors, seed=seed, npc_vehicles=npc_vehicles)
    built = time.perf_counter() - started
    driver = PurePursuit(world.track, world.vehicle, target_speed=8.0)
    tick = world.reset(seed=seed)
    controls = []
    for _ in range(ticks):
        control = driver.control(tick.measurements)
        controls.append(control)
        tick = world.step(control)
    started = time.perf_counter()
    world.reset(seed=seed)
    reset = time.perf_counter() - started
    started = time.perf_counter()
    for control in controls:
        world.step(control)
    elapsed = time.perf_counter() - started
    world.close()
    return {"ticks_per_second": ticks / elapsed, "us_per_tick": 1e6 * elapsed / ticks,
            "build_seconds": built, "reset_seconds": reset}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m carla_client.bench",
        description="Tick rate of the built-in world, state only and with a chase camera.")
    parser.add_argument("--width", metavar="PX", type=int, default=84,
                        help="camera width (default: %(default)s)")
    parser.add_argument("--height", metavar="PX", type=int, default=84,
                        help="camera height (default: %(default)s)")
    parser.add_argument("--ticks", metavar="N", type=int, default=3000,
                        help="ticks timed per configuration (default: %(default)s)")
    parser.add_argument("--seed", metavar="N", type=int, default=0,
                        help="world and episode seed (default: %(default)s)")
    parser.add_argument("--npc", metavar="N", type=int, default=0,
                        help="NPC vehicles (default: %(default)s)")
    parser.add_argument("--all", action="store_true",
                        help="also time semantic-segmentation and depth cameras (default: off)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of a table (default: off)")
    args = parser.parse_args(argv)
    if args.width < 1 or args.height < 1 or args.ticks < 1:
        parser.error("--width, --height and --ticks must be positive")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    results = {}
    for name, sensors in configurations(args.width, args.height, args.all).items():
        results[name] = measure(sensors, args.ticks, args.seed, args.npc)
    report = {"python": platform.python_version(), "numpy": np.__version__,
              "ticks": args.ticks, "npc_vehicles": args.npc, "results": results}
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    print("built-in world, Python {}, numpy {}, {} ticks, {} NPCs".format(
        report["python"], report["numpy"], args.ticks, args.npc))
    print("{:<18} {:>12} {:>12} {:>10}".format("config", "ticks/s", "us/tick", "build s"))
    for name, r in results.items():
        print("{:<18} {:>12.0f} {:>12.1f} {:>10.2f}".format(
            name, r["ticks_per_second"], r["us_per_tick"], r["build_seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
