"""Scaling out: env steps/s of BridgeVecEnv and SubprocVecEnv over N sims (``agent.bench --scale``).

The sims are ``python -m carla_client --world builtin --tick-latency-ms L`` processes under the sim
interpreter: each tick lasts at least L ms of wall time without using CPU, as a CARLA server bound by
GPU rendering would. N such sims can give at most N x 1000 / L env steps/s (the ideal); what a
vectorised env loses on the way is its own overhead: sending, waiting, translating, process hops.
Both vec envs step the same sims (the first N of one pool) with the same random actions and the
training config's env settings; repeats are interleaved and the medians reported.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from agent.simproc import SimProcess
from launch.procs import wait_bridge

#: the record written per N (``--json``): exactly these keys.
KEYS = ("sims", "bridge_vec_steps_per_s", "subproc_steps_per_s", "ideal_steps_per_s")


def vec_steps_per_second(venv: Any, steps: int, warmup: int, seed: int = 0) -> float:
    """Env steps/s (vec steps x envs) of ``venv`` under uniformly random actions."""
    space = venv.action_space
    rng = np.random.default_rng(seed)
    actions = rng.uniform(space.low, space.high,
                          (steps + warmup, venv.num_envs, *space.shape)).astype(space.dtype)
    venv.reset()
    started = time.perf_counter()
    for index, action in enumerate(actions):
        if index == warmup:
            started = time.perf_counter()
        venv.step(action)
    return steps * venv.num_envs / (time.perf_counter() - started)


def start_sims(count: int, tick_latency_ms: float, sim_python: str | None, log_dir: Path,
               sensors: str | None = None) -> list[SimProcess]:
    """Starts ``count`` built-in sims at once and waits until each answers a ping.

    ``sensors``: a carla_client ``--sensors`` file; None: its defaults (a 64x64 camera, collision,
    lane invasion). Started from this thread: a child dies with the thread that started it
    (PR_SET_PDEATHSIG).
    """
    sims = [SimProcess(seed=index, python=sim_python, log_path=log_dir / f"sim-{index}.log",
                       sensors=sensors, extra_args=("--tick-latency-ms", str(tick_latency_ms)))
            for index in range(count)]
    try:
        for sim in sims:
            sim.child.start()
        deadline = time.monotonic() + 120.0
        for sim in sims:  # they boot in parallel; waiting for them in turn costs nothing
            wait_bridge(sim.endpoint, deadline, sim.child)
    except BaseException:
        for sim in sims:
            sim.stop()
        raise
    return sims


def measure(make: Callable[[], Any], steps: int, warmup: int) -> float:
    venv = make()
    try:
        return vec_steps_per_second(venv, steps, warmup)
    finally:
        venv.close()


def scale(counts: Sequence[int], tick_latency_ms: float, steps: int, warmup: int, repeats: int,
          sim_python: str | None, log_dir: Path, env_kwargs: dict[str, Any],
          sensors: str | None = None) -> list[dict]:
    """One record per sim count (see KEYS): medians over ``repeats`` interleaved runs."""
    from agent.vec import BridgeVecEnv, make_vec_env

    sims = start_sims(max(counts), tick_latency_ms, sim_python, log_dir, sensors)
    runs: dict[tuple[int, str], list[float]] = {}
    try:
        endpoints = [sim.endpoint for sim in sims]
        for repeat in range(repeats):
            for n in counts:
                makers = {
                    "bridge": lambda: BridgeVecEnv(endpoints[:n], seed=0, **env_kwargs),
                    "subproc": lambda: make_vec_env(endpoints[:n], seed=0, vec="subproc",
                                                    **env_kwargs),
                }
                order = list(makers) if repeat % 2 == 0 else list(reversed(makers))
                for kind in order:
                    rate = measure(makers[kind], steps, warmup)
                    runs.setdefault((n, kind), []).append(rate)
                    print(f"[{repeat + 1}/{repeats}] {n} sims, {kind}: {rate:.1f} env steps/s "
                          f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
    finally:
        for sim in sims:
            sim.stop()
    return [{"sims": n,
             "bridge_vec_steps_per_s": round(statistics.median(runs[(n, "bridge")]), 2),
             "subproc_steps_per_s": round(statistics.median(runs[(n, "subproc")]), 2),
             "ideal_steps_per_s": round(n * 1000.0 / tick_latency_ms, 2)} for n in counts]


def markdown(records: list[dict]) -> str:
    lines = ["| sims | ideal (steps/s) | BridgeVecEnv (steps/s) | / ideal | SubprocVecEnv (steps/s) "
             "| / ideal | BridgeVecEnv / SubprocVecEnv |", "|---|---|---|---|---|---|---|"]
    for r in records:
        ideal, bridge, subproc = (r["ideal_steps_per_s"], r["bridge_vec_steps_per_s"],
                                  r["subproc_steps_per_s"])
        lines.append(f"| {r['sims']} | {ideal:.0f} | {bridge:.1f} | {bridge / ideal:.2f} | "
                     f"{subproc:.1f} | {subproc / ideal:.2f} | {bridge / subproc:.2f} |")
    return "\n".join(lines)


def plot(records: list[dict], out: str | Path, tick_latency_ms: float) -> Path:
    """Steps/s against sim count (both vec envs and the ideal) and each as a fraction of the ideal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    sims = [r["sims"] for r in records]
    ideal = np.array([r["ideal_steps_per_s"] for r in records])
    series = (("BridgeVecEnv", "bridge_vec_steps_per_s", "o-"),
              ("SubprocVecEnv", "subproc_steps_per_s", "s-"))
    figure, (rates, ratios) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    rates.plot(sims, ideal, "k--", label="ideal: N x 1000 / L")
    for label, key, style in series:
        values = np.array([r[key] for r in records])
        rates.plot(sims, values, style, label=label)
        ratios.plot(sims, values / ideal, style, label=label)
    rates.set_xscale("log", base=2)
    rates.set_yscale("log", base=2)
    rates.yaxis.set_major_formatter(ScalarFormatter())
    rates.set_ylabel("env steps / s")
    rates.legend()
    ratios.set_xscale("log", base=2)
    ratios.axhline(0.9, color="k", linestyle=":", label="goal: 0.9 x ideal")
    ratios.set_ylim(0.5, 1.02)
    ratios.set_ylabel("fraction of the ideal")
    ratios.legend(loc="lower left")
    for axis in (rates, ratios):
        axis.set_xticks(sims, [str(s) for s in sims])
        axis.set_xlabel("sims (one env each)")
        axis.grid(True, which="both", alpha=0.3)
    figure.suptitle(f"One trainer, N built-in sims with a {tick_latency_ms:g} ms tick")
    figure.tight_layout()
    out = Path(out)
    figure.savefig(out)
    plt.close(figure)
    return out
