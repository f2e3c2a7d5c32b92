"""Measures the built-in world's tick rate: ``python -m carla_client.bench [--width W --height H]``.

Each configuration is driven by the scripted pure-pursuit driver; its controls are recorded first
and then replayed under the timer, so the figures count ``BuiltinWorld.step`` alone (physics, route
projection, events and rendering), not the driver. Pin it to one core for comparable numbers:
``taskset -c 0 python -m carla_client.bench``.

``--world carla084`` also starts ``python -m carla_client.carla084_server`` and replays the same
controls through the CARLA 0.8.4 protocol (the ``--world carla084`` backend's ``step``: one Control
out, one frame of Measurements and camera payloads back), next to the built-in world in process.
The two paths alternate ``--repeats`` times (a shared machine's load then hits both alike); the
report gives the medians and the CPU each process spent per tick.
"""
import argparse
import json
import os
import platform
import selectors
import socket
import subprocess
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from bridge.schema import VehicleControl
from carla_client.backend import WorldBackend
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


def record_controls(world: BuiltinWorld, ticks: int, seed: int) -> List[VehicleControl]:
    """``ticks`` pure-pursuit controls driven from the start line."""
    driver = PurePursuit(world.track, world.vehicle, target_speed=8.0)
    tick = world.reset(seed=seed)
    controls = []
    for _ in range(ticks):
        control = driver.control(tick.measurements)
        controls.append(control)
        tick = world.step(control)
    return controls


def replay(world: WorldBackend, controls: Sequence[VehicleControl], seed: int,
           options: Optional[Dict[str, Any]] = None, server_pid: Optional[int] = None
           ) -> Dict[str, float]:
    """Times ``world.step`` over ``controls`` after a timed reset: wall time, and the CPU time of
    this process (and of ``server_pid``'s, where /proc tells it)."""
    started = time.perf_counter()
    world.reset(seed=seed, options=options or {})
    reset = time.perf_counter() - started
    server_cpu = _process_cpu_seconds(server_pid)
    cpu = time.process_time()
    started = time.perf_counter()
    for control in controls:
        world.step(control)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    result = {"ticks_per_second": len(controls) / elapsed,
              "us_per_tick": 1e6 * elapsed / len(controls), "reset_seconds": reset,
              "cpu_us_per_tick": 1e6 * cpu / len(controls)}
    server_after = _process_cpu_seconds(server_pid)
    if server_cpu is not None and server_after is not None:
        result["server_cpu_us_per_tick"] = 1e6 * (server_after - server_cpu) / len(controls)
    return result


def _process_cpu_seconds(pid: Optional[int]) -> Optional[float]:
    """User + system CPU seconds of process ``pid`` from /proc (None elsewhere or without pid)."""
    if pid is None:
        return None
    try:
        with open("/proc/{}/stat".format(pid)) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, AttributeError):
        return None


def measure(sensors: Sequence[SensorConfig], ticks: int, seed: int, npc_vehicles: int
            ) -> Dict[str, float]:
    """Builds a world, records ``ticks`` pure-pursuit controls, replays them under the timer."""
    started = time.perf_counter()
    world = BuiltinWorld(sensors=sensors, seed=seed, npc_vehicles=npc_vehicles)
    built = time.perf_counter() - started
    controls = record_controls(world, ticks, seed)
    result = replay(world, controls, seed)
    world.close()
    result["build_seconds"] = built
    return result


def _free_port_block() -> int:
    """A world port P with P, P+1 and P+2 free a moment ago."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base > 65533:
            continue
        try:
            for port in (base + 1, base + 2):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise OSError("no three consecutive free ports")


def measure_carla084(sensors: Sequence[SensorConfig], ticks: int, seed: int, legacy_client: str,
                     repeats: int = 1) -> Dict[str, List[Dict[str, Any]]]:
    """The same replay in process and through carla084_server (a child process) and the carla084
    backend, alternating ``repeats`` times; each run's figures under "builtin" and "carla084"."""
    from carla_client.carla084.world import Carla084World

    builtin = BuiltinWorld(sensors=sensors, seed=seed)
    controls = record_controls(builtin, ticks, seed)
    port = _free_port_block()
    server = subprocess.Popen(
        [sys.executable, "-m", "carla_client.carla084_server", "--port", str(port), "--seed",
         str(seed), "--log-level", "WARNING"], stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    runs = {"builtin": [], "carla084": []}  # type: Dict[str, List[Dict[str, Any]]]
    try:
        selector = selectors.DefaultSelector()
        selector.register(server.stdout, selectors.EVENT_READ)
        if not selector.select(60) or not server.stdout.readline().startswith(b"ready"):
            raise OSError("carla084_server did not start (exit code {})".format(server.poll()))
        selector.close()
        with Carla084World(host="127.0.0.1", port=port, sensors=sensors, seed=seed,
                           legacy_client=legacy_client) as world:
            world.reset(seed=seed, options={"start_index": 0})  # builds the server's world
            for _ in range(repeats):
                runs["builtin"].append(replay(builtin, controls, seed))
                through = replay(world, controls, seed, {"start_index": 0}, server.pid)
                through["client"] = world.client_kind
                runs["carla084"].append(through)
    finally:
        builtin.close()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        server.stdout.close()
    return runs


def _median(runs: Sequence[Dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m carla_client.bench",
        description="Tick rate of the built-in world, state only and with a chase camera.")
    parser.add_argument("--world", choices=("builtin", "carla084"), default="builtin",
                        help="builtin: the built-in world in process; carla084: also through the "
                             "0.8.4 protocol against carla084_server (default: %(default)s)")
    parser.add_argument("--legacy-client", choices=("auto", "pythonclient", "wire"), default="wire",
                        help="--world carla084: the 0.8.4 client (default: %(default)s)")
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
    parser.add_argument("--repeats", metavar="N", type=int, default=3,
                        help="--world carla084: alternating runs of each path; the report gives "
                             "medians (default: %(default)s)")
    parser.add_argument("--all", action="store_true",
                        help="also time semantic-segmentation and depth cameras (default: off)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of a table (default: off)")
    args = parser.parse_args(argv)
    if args.width < 1 or args.height < 1 or args.ticks < 1 or args.repeats < 1:
        parser.error("--width, --height, --ticks and --repeats must be positive")
    return args


def main_carla084(args: argparse.Namespace) -> int:
    sensors = configurations(args.width, args.height, False)["rgb_{}x{}".format(args.width,
                                                                                  args.height)]
    runs = measure_carla084(sensors, args.ticks, args.seed, args.legacy_client, args.repeats)
    ratios = [t["ticks_per_second"] / b["ticks_per_second"]
              for b, t in zip(runs["builtin"], runs["carla084"])]
    summary = {path: {key: _median(path_runs, key) for key in (
        "ticks_per_second", "us_per_tick", "cpu_us_per_tick", "server_cpu_us_per_tick")
        if _median(path_runs, key) is not None} for path, path_runs in runs.items()}
    builtin, through = summary["builtin"], summary["carla084"]
    ratio = through["ticks_per_second"] / builtin["ticks_per_second"]
    client = runs["carla084"][0]["client"]
    report = {"python": platform.python_version(), "ticks": args.ticks, "repeats": args.repeats,
              "camera": "{}x{} RGB".format(args.width, args.height), "client": client,
              "builtin_in_process": builtin, "carla084_protocol": through, "ratio": ratio,
              "ratios": ratios, "runs": runs, "goal": 0.5}
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    print("CARLA 0.8.4 protocol vs built-in world in process: Python {}, {} ticks, {}, medians of "
          "{} alternating runs".format(report["python"], args.ticks, report["camera"],
                                       args.repeats))
    print("{:<34} {:>10} {:>10} {:>26}".format("path", "ticks/s", "us/tick", "CPU us/tick"))
    print("{:<34} {:>10.0f} {:>10.1f} {:>26.0f}".format(
        "built-in world, in process", builtin["ticks_per_second"], builtin["us_per_tick"],
        builtin["cpu_us_per_tick"]))
    server_cpu = through.get("server_cpu_us_per_tick")
    cpu = "{:.0f} client + {} server".format(
        through["cpu_us_per_tick"], "?" if server_cpu is None else "{:.0f}".format(server_cpu))
    print("{:<34} {:>10.0f} {:>10.1f} {:>26}".format(
        "carla084_server, {} client".format(client), through["ticks_per_second"],
        through["us_per_tick"], cpu))
    print("ratio {:.2f}x (runs: {}; goal >= 0.5x)".format(
        ratio, " ".join("{:.2f}x".format(r) for r in ratios)))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.world == "carla084":
        return main_carla084(args)
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
