"""Env steps/s over the bridge versus the same built-in world in process: ``python -m agent.bench``.

For each sensor setup (state only; an 84x84 camera) it runs the same seeded action sequence through
``CarlaBridgeEnv`` twice: with the world in this process (``inprocess://builtin``) and with the world
in a ``python -m carla_client`` process under the sim interpreter, talking over the bridge.
Repeats are interleaved and the medians reported; the goal is bridge >= 0.9x in process.

``--record-steps`` (default 1000; 0 skips) also measures Minari recording (agent.dataset): env
steps/s over the bridge with and without recording for an 84x84 camera (the goal: overhead under
20 %), and what the dataset costs on disk per 1,000 steps for an 84x84 and an 800x600 camera.

``--scale 1,2,4,8,16 --tick-latency-ms 50`` measures scaling out instead (agent/bench_scale.py):
BridgeVecEnv and SubprocVecEnv over N slow-ticking sims against the ideal N x 1000 / L.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.env import CarlaBridgeEnv
from agent.simproc import SimProcess, default_sim_python

SETUPS = {
    "state only": [{"name": "collision", "type": "sensor.other.collision"},
                   {"name": "lane_invasion", "type": "sensor.other.lane_invasion"}],
    "84x84 camera": [{"name": "camera", "type": "sensor.camera.rgb", "view": "chase",
                      "width": 84, "height": 84, "fov": 90},
                     {"name": "collision", "type": "sensor.other.collision"},
                     {"name": "lane_invasion", "type": "sensor.other.lane_invasion"}],
}


def steps_per_second(env: CarlaBridgeEnv, steps: int, seed: int = 0, warmup: int = 50,
                     policy: Any = None) -> float:
    """Steps ``env`` (resetting at episode ends) and returns steps/s.

    Without ``policy`` the actions are a fixed pseudo-random drive (the env and transport alone);
    with one, each action comes from ``policy.predict`` as in a PPO rollout.
    """
    rng = np.random.default_rng(seed)
    actions = np.stack([rng.uniform(-0.3, 0.3, steps + warmup), rng.uniform(0.2, 1.0, steps + warmup)],
                       axis=1).astype(np.float32)
    obs, _ = env.reset(seed=seed)
    started = 0.0
    for i, action in enumerate(actions):
        if i == warmup:
            started = time.perf_counter()
        if policy is not None:
            action = policy.predict(obs, deterministic=False)[0]
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    return steps / (time.perf_counter() - started)


def training_steps_per_second(endpoint: str, steps: int, use_shm: bool) -> float:
    """Env steps/s of PPO training (rollouts and updates) with the default config on ``endpoint``."""
    import torch

    from agent.config import load_config
    from agent.train import build_model, env_kwargs
    from agent.vec import make_vec_env

    torch.set_num_threads(1)
    config = load_config()
    kwargs = {**env_kwargs(config), "camera_size": None, "use_shm": use_shm}
    venv = make_vec_env([endpoint], seed=0, **kwargs)
    try:
        model = build_model(config, venv)
        started = time.perf_counter()
        model.learn(steps)
        return model.num_timesteps / (time.perf_counter() - started)
    finally:
        venv.close()


def make_policy(env: CarlaBridgeEnv) -> Any:
    """A freshly initialised PPO policy of the default config (camera CNN + state MLP)."""
    import torch

    from agent.config import load_config
    from agent.train import build_model

    torch.set_num_threads(1)
    config = load_config()
    return build_model({"seed": 0, "policy": config["policy"], "ppo": config["ppo"]}, env)


def bench(steps: int, repeats: int, sim_python: str, use_shm: bool, policy_steps: int,
          train_steps: int = 0) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        for setup, sensors in SETUPS.items():
            path = Path(tmp) / (setup.replace(" ", "_") + ".json")
            path.write_text(json.dumps(sensors))
            runs: dict[str, list[float]] = {k: [] for k in (
                "inproc", "bridge", "inproc_policy", "bridge_policy", "inproc_train", "bridge_train")}
            rtt = []
            inprocess = f"inprocess://builtin?sensors={path}"
            with SimProcess(sensors=str(path), python=sim_python,
                            log_path=Path(tmp) / "sim.log") as sim:
                for _ in range(repeats):
                    for key, endpoint in (("inproc", inprocess), ("bridge", sim.endpoint)):
                        # camera_size=None: no resize, so both paths pay the same conversion
                        with CarlaBridgeEnv(endpoint, camera_size=None, use_shm=use_shm,
                                            max_episode_steps=10**6) as env:
                            runs[key].append(steps_per_second(env, steps))
                            if key == "bridge":
                                rtt.append(env.bridge_stats()[:2])
                            if policy_steps:
                                runs[key + "_policy"].append(steps_per_second(
                                    env, policy_steps, policy=make_policy(env)))
                        if train_steps:
                            runs[key + "_train"].append(
                                training_steps_per_second(endpoint, train_steps, use_shm))
            med = {k: statistics.median(v) if v else float("nan") for k, v in runs.items()}
            results.append({"setup": setup, "in_process": med["inproc"], "bridge": med["bridge"],
                            "ratio": med["bridge"] / med["inproc"],
                            "in_process_policy": med["inproc_policy"],
                            "bridge_policy": med["bridge_policy"],
                            "ratio_policy": med["bridge_policy"] / med["inproc_policy"],
                            "in_process_train": med["inproc_train"],
                            "bridge_train": med["bridge_train"],
                            "ratio_train": med["bridge_train"] / med["inproc_train"],
                            "rtt_p50_ms": 1000 * statistics.median(r[0] for r in rtt),
                            "rtt_p99_ms": 1000 * statistics.median(r[1] for r in rtt),
                            "runs": runs})
            print(f"{setup}: in process {med['inproc']:.0f} steps/s, bridge {med['bridge']:.0f} "
                  f"steps/s ({med['bridge'] / med['inproc']:.2f}x); with a policy "
                  f"{med['inproc_policy']:.0f} vs {med['bridge_policy']:.0f}", file=sys.stderr)
    return results


def markdown(results: list[dict], steps: int, repeats: int) -> str:
    lines = ["| setup | loop | in process (steps/s) | bridge (steps/s) | bridge / in process | "
             "round trip p50 / p99 (ms) |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['setup']} | env only | {r['in_process']:.0f} | {r['bridge']:.0f} | "
                     f"{r['ratio']:.2f}x | {r['rtt_p50_ms']:.2f} / {r['rtt_p99_ms']:.2f} |")
        if r["in_process_policy"] == r["in_process_policy"]:  # not NaN
            lines.append(f"| {r['setup']} | PPO policy acting | {r['in_process_policy']:.0f} | "
                         f"{r['bridge_policy']:.0f} | {r['ratio_policy']:.2f}x | |")
        if r["in_process_train"] == r["in_process_train"]:
            lines.append(f"| {r['setup']} | PPO training (rollouts + updates) | "
                         f"{r['in_process_train']:.0f} | {r['bridge_train']:.0f} | "
                         f"{r['ratio_train']:.2f}x | |")
    lines.append(f"\nMedians of {repeats} interleaved runs of {steps} env steps each "
                 "(policy loops: fewer steps, a fresh default PPO policy choosing every action; "
                 "training: the default PPO config learning from scratch).")
    return "\n".join(lines)


CAMERAS = {"84x84": (84, 84), "800x600": (600, 800)}


def _camera_sensors(height: int, width: int) -> list[dict]:
    return [dict(SETUPS["84x84 camera"][0], width=width, height=height)] + SETUPS["84x84 camera"][1:]


def recording_bench(steps: int, repeats: int, sim_python: str, use_shm: bool) -> list[dict]:
    """Steps/s with and without recording (interleaved, medians) and dataset MB per 1,000 steps."""
    import os

    from agent.dataset import DatasetWriter, EpisodeRecorder

    results = []
    with tempfile.TemporaryDirectory(prefix="agent-bench-record-") as tmp:
        previous = os.environ.get("MINARI_DATASETS_PATH")
        os.environ["MINARI_DATASETS_PATH"] = str(Path(tmp) / "datasets")
        try:
            for name, (height, width) in CAMERAS.items():
                sensors = Path(tmp) / f"{name}.json"
                sensors.write_text(json.dumps(_camera_sensors(height, width)))
                # 800x600 renders slowly in the built-in world: its size, not its speed, matters here
                n = steps if name == "84x84" else max(steps // 5, 50)
                runs: dict[str, list[float]] = {"plain": [], "recording": []}
                sizes = []
                with SimProcess(sensors=str(sensors), python=sim_python,
                                log_path=Path(tmp) / "sim.log") as sim:
                    for repeat in range(repeats if name == "84x84" else 1):
                        for key in ("plain", "recording"):
                            with CarlaBridgeEnv(sim.endpoint, camera_size=None, use_shm=use_shm,
                                                max_episode_steps=200) as base:
                                if key == "plain":
                                    runs[key].append(steps_per_second(base, n))
                                    continue
                                writer = DatasetWriter(f"bench/{name}-{repeat}-v0", "bench", False)
                                env = EpisodeRecorder(base, writer,
                                                      {"endpoint": sim.endpoint, "camera_size": None})
                                runs[key].append(steps_per_second(env, n))
                                env.close()
                                dataset = writer.close()
                                if dataset is not None:
                                    sizes.append(dataset.storage.get_size() / dataset.total_steps)
                plain, recording = (statistics.median(runs[k]) for k in ("plain", "recording"))
                results.append({"camera": name, "steps": n, "plain": plain, "recording": recording,
                                "overhead": 1.0 - recording / plain,
                                "mb_per_1000_steps": 1000 * statistics.median(sizes), "runs": runs})
                print(f"{name}: {plain:.0f} steps/s plain, {recording:.0f} recording "
                      f"({100 * results[-1]['overhead']:.0f} % overhead), "
                      f"{results[-1]['mb_per_1000_steps']:.1f} MB per 1,000 steps", file=sys.stderr)
        finally:
            if previous is None:
                os.environ.pop("MINARI_DATASETS_PATH", None)
            else:
                os.environ["MINARI_DATASETS_PATH"] = previous
    return results


def recording_markdown(results: list[dict], repeats: int) -> str:
    lines = ["| camera | env steps/s | recording steps/s | recording overhead | dataset per 1,000 "
             "steps |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['camera']} | {r['plain']:.0f} | {r['recording']:.0f} | "
                     f"{100 * r['overhead']:.1f} % | {r['mb_per_1000_steps']:.1f} MB |")
    lines.append(f"\nMinari HDF5, lossless (jpeg_encoding=False), no infos; 84x84: medians of {repeats} "
                 "interleaved runs, 800x600: one shorter run (its size is what matters).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="steps per run (default: 3000)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs (default: 3)")
    parser.add_argument("--sim-python", default=default_sim_python(),
                        help="interpreter of the sim side (default: %(default)s)")
    parser.add_argument("--no-shm", dest="shm", action="store_false", help="plain TCP frames only")
    parser.add_argument("--policy-steps", type=int, default=1000,
                        help="steps per run with a PPO policy acting; 0 skips (default: 1000)")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="steps per run of PPO training (default: 0, skipped; 4096 = 4 updates)")
    parser.add_argument("--record-steps", type=int, default=1000,
                        help="steps per run of the recording benchmark; 0 skips (default: 1000)")
    parser.add_argument("--only-recording", action="store_true",
                        help="run the recording benchmark only")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the results here")
    scaling = parser.add_argument_group("scaling out (--scale)")
    scaling.add_argument("--scale", metavar="N,N,...", default=None,
                         help="measure BridgeVecEnv and SubprocVecEnv over these sim counts instead; "
                              "--json then gets one record per count: sims, "
                              "bridge_vec_steps_per_s, subproc_steps_per_s, ideal_steps_per_s")
    scaling.add_argument("--tick-latency-ms", metavar="L", type=float, default=50.0,
                         help="each sim tick lasts at least L ms (default: %(default)s)")
    scaling.add_argument("--scale-steps", metavar="S", type=int, default=100,
                         help="vec steps per run after a 10-step warm-up (default: %(default)s)")
    scaling.add_argument("--plot", metavar="PNG", default=None, help="also plot the scaling here")
    scaling.add_argument("--scale-sensors", metavar="FILE", default=None,
                         help="the sims' carla_client --sensors file, e.g. "
                              "launch/configs/sensors_events.json (what python -m launch up serves "
                              "the training config: no camera) (default: carla_client's defaults, "
                              "a 64x64 camera rendered every tick, collision, lane invasion)")
    scaling.add_argument("--nice", metavar="INCREMENT", type=int, default=0,
                         help="change the scheduling priority of the bench and of every process it "
                              "starts, as nice(1) does (a negative value needs root): on a machine "
                              "shared with other jobs it measures this code rather than their load "
                              "(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.scale is not None:
        return main_scale(args, parser)
    results: list[dict] = []
    if not args.only_recording:
        results = bench(args.steps, args.repeats, args.sim_python, args.shm, args.policy_steps,
                        args.train_steps)
        print(markdown(results, args.steps, args.repeats))
    recording: list[dict] = []
    if args.record_steps > 0 or args.only_recording:
        recording = recording_bench(args.record_steps or 1000, args.repeats, args.sim_python,
                                    args.shm)
        print(recording_markdown(recording, args.repeats))
    if args.json:
        Path(args.json).write_text(json.dumps({"bridge": results, "recording": recording},
                                              indent=1))
    return 0


def main_scale(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from agent import bench_scale
    from agent.config import load_config
    from agent.train import env_kwargs

    try:
        counts = [int(n) for n in args.scale.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--scale wants comma-separated sim counts, got {args.scale!r}")
    if not counts or min(counts) < 1 or not args.tick_latency_ms > 0 or args.scale_steps < 1:
        parser.error("--scale needs counts >= 1, --tick-latency-ms > 0 and --scale-steps >= 1")
    sensors = None
    if args.scale_sensors is not None:
        sensors = str(Path(args.scale_sensors).resolve())  # the sims run in the repository root
        if not Path(sensors).is_file():
            parser.error(f"--scale-sensors: no file {args.scale_sensors}")
    if args.nice:
        os.nice(args.nice)  # inherited by the sims and SubprocVecEnv's workers started below
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="agent-bench-scale-") as tmp:
        records = bench_scale.scale(counts, args.tick_latency_ms, args.scale_steps, 10,
                                    args.repeats, args.sim_python, Path(tmp),
                                    env_kwargs(load_config()), sensors)
    print(bench_scale.markdown(records))
    print(f"\nMedians of {args.repeats} interleaved runs of {args.scale_steps} vec steps each; "
          f"{args.tick_latency_ms:g} ms ticks; sim sensors {args.scale_sensors or 'default'}; "
          f"niceness {os.nice(0)}; load average before "
          f"{load[0]:.1f}, after {os.getloadavg()[0]:.1f}.")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    if args.plot:
        bench_scale.plot(records, args.plot, args.tick_latency_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
