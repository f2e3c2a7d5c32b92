"""SB3 callbacks that write driving and bridge metrics to the run's logger (TensorBoard)."""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from agent.reward import TERMS
from agent.status import STATUS_VERSION, write_status

#: keys of info["episode_metrics"] logged as ``episode/<key>`` (means over the episodes that ended).
EPISODE_KEYS = ("return", "length", "route_completion", "lap_completed", "collisions",
                "lane_invasions", "mean_speed")
#: per-step info keys summed over each rollout and logged as ``sim/<key>`` (CARLA's timing).
SIM_COUNT_KEYS = ("late_events",)


class DrivingMetricsCallback(BaseCallback):
    """Logs episode metrics (return, route completion, collisions...) and per-step reward terms.

    Values are averaged with ``logger.record_mean`` and written when PPO dumps its logs after each
    rollout, next to SB3's own ``rollout/`` and ``train/`` scalars. CARLA's late events and the
    steps the sim side could not finish are summed per rollout as ``sim/late_events`` and
    ``sim/sim_errors``.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._sim_counts: dict[str, int] = {}
        self._sim_seen = False

    def _on_step(self) -> bool:
        record_mean = self.logger.record_mean
        for info in self.locals.get("infos", ()):
            for term in TERMS:
                value = info.get(f"reward_{term}")
                if value is not None:
                    record_mean(f"reward/{term}", value)
            metrics = info.get("episode_metrics")
            if metrics is not None:
                for key in EPISODE_KEYS:
                    record_mean(f"episode/{key}", float(metrics[key]))
            if info.get("bridge_reconnected"):
                self.logger.record_mean("bridge/reconnects", 1.0)
            if info.get("sim_error"):
                self._sim_counts["sim_errors"] = self._sim_counts.get("sim_errors", 0) + 1
            for key in SIM_COUNT_KEYS:
                if info.get(key):
                    self._sim_counts[key] = self._sim_counts.get(key, 0) + int(info[key])
        return True

    def _on_rollout_start(self) -> None:
        self._sim_counts = {}

    def _on_rollout_end(self) -> None:
        # Sums per rollout. Written from the first rollout that had any on: then a 0 is a point on
        # the curve too, while a world that never reports late events (the built-in one) adds no tag.
        counts = self._sim_counts
        self._sim_seen = self._sim_seen or bool(counts)
        if self._sim_seen:
            for key in SIM_COUNT_KEYS + ("sim_errors",):
                self.logger.record(f"sim/{key}", float(counts.get(key, 0)))


class BridgeStatsCallback(BaseCallback):
    """After each rollout, logs the bridge's round-trip p50/p99 (ms) and the sim's ticks per second.

    Asks every env through ``env_method("bridge_stats")`` (one pipe round trip per worker per
    rollout). Percentiles are averaged over envs; ticks/s is summed (the whole fleet's rate).
    """

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        try:
            stats = self.training_env.env_method("bridge_stats")
        except (AttributeError, EOFError, BrokenPipeError):
            return
        p50 = [s[0] for s in stats if math.isfinite(s[0])]
        p99 = [s[1] for s in stats if math.isfinite(s[1])]
        tps = [s[2] for s in stats if math.isfinite(s[2])]
        if p50:
            self.logger.record("bridge/round_trip_p50_ms", 1000.0 * float(np.mean(p50)))
        if p99:
            self.logger.record("bridge/round_trip_p99_ms", 1000.0 * float(np.mean(p99)))
        if tps:
            self.logger.record("bridge/sim_ticks_per_s", float(np.sum(tps)))


class ProgressLogCallback(BaseCallback):
    """Logs one line per rollout (steps, steps/s, mean episode return and route completion).

    Without a terminal (under the launcher the progress bar is off and the output goes to
    ``runs/<run>/logs/trainer.log``) this is how a person sees that training moves.
    """

    def __init__(self, log: logging.Logger, total_timesteps: int) -> None:
        super().__init__()
        self._log = log
        self._total = total_timesteps
        self._started = time.monotonic()
        self._start_steps = 0
        self._returns: list[float] = []
        self._completions: list[float] = []

    def _on_training_start(self) -> None:
        self._started = time.monotonic()
        self._start_steps = self.num_timesteps

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            metrics = info.get("episode_metrics")
            if metrics is not None:
                self._returns.append(float(metrics["return"]))
                self._completions.append(float(metrics["route_completion"]))
        return True

    def _on_rollout_end(self) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = (self.num_timesteps - self._start_steps) / elapsed
        episodes = ""
        if self._returns:
            episodes = "; {} episodes: mean return {:.1f}, route completion {:.0%}".format(
                len(self._returns), float(np.mean(self._returns)), float(np.mean(self._completions)))
        self._log.info("step %d/%d (%.0f steps/s)%s", self.num_timesteps, self._total, rate,
                       episodes)
        self._returns.clear()
        self._completions.clear()


class TimeLimitCallback(BaseCallback):
    """Ends training after ``minutes`` of wall time, as if its step budget were spent.

    ``learn()`` then returns normally and the trainer saves ``model.zip``: a run of the default
    config never trains longer than its time limit, however busy the machine.
    """

    def __init__(self, minutes: float, log: logging.Logger) -> None:
        super().__init__()
        self.seconds = 60.0 * float(minutes)
        self._log = log
        self._deadline = math.inf
        self.reached = False

    def _on_training_start(self) -> None:
        self._deadline = time.monotonic() + self.seconds

    def _on_step(self) -> bool:
        if time.monotonic() < self._deadline:
            return True
        self.reached = True
        self._log.info("time limit of %g min reached at step %d: training ends here",
                       self.seconds / 60.0, self.num_timesteps)
        return False


class StatusFileCallback(BaseCallback):
    """Keeps ``runs/<run>/status.json`` (agent.status) up to date for the launcher's console.

    Rewrites the file at most every ``interval`` seconds while collecting experience, and at each
    phase change (``collecting`` <-> ``updating``; ``finished`` at the end). The steps/s and ETA are
    wall-clock figures since training (re)started, PPO updates included.

    Args:
        path: the status file.
        total_timesteps: the run's budget (the ETA's target).
        device: the torch device the model runs on, reported as is.
        interval: seconds between rewrites while collecting.
    """

    def __init__(self, path: str | Path, total_timesteps: int, device: str = "",
                 interval: float = 1.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.interval = interval
        self.status: dict[str, Any] = {
            "version": STATUS_VERSION, "pid": os.getpid(), "device": device, "phase": "starting",
            "started": time.time(), "num_timesteps": 0, "start_timesteps": 0,
            "total_timesteps": int(total_timesteps), "steps_per_second": None, "eta_seconds": None,
            "episodes": 0, "last_episode": None, "last_update_seconds": None}
        self._t0 = time.monotonic()
        self._last_write = -math.inf
        self._update_started: float | None = None

    def _on_training_start(self) -> None:
        self._t0 = time.monotonic()
        self.status.update(started=time.time(), start_timesteps=self.num_timesteps)
        self.write("collecting")

    def _on_rollout_start(self) -> None:
        if self._update_started is not None:
            self.status["last_update_seconds"] = round(time.monotonic() - self._update_started, 3)
            self._update_started = None
        self.write("collecting")

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            metrics = info.get("episode_metrics")
            if metrics is not None:
                self.status["episodes"] += 1
                self.status["last_episode"] = {
                    "return": float(metrics["return"]), "route_completion": float(metrics["route_completion"]),
                    "collisions": int(metrics["collisions"]), "lap_completed": bool(metrics["lap_completed"]),
                    "length": int(metrics["length"])}
        if time.monotonic() - self._last_write >= self.interval:
            self.write("collecting")
        return True

    def _on_rollout_end(self) -> None:
        self._update_started = time.monotonic()
        self.write("updating")

    def write(self, phase: str, **extra: Any) -> None:
        """Rewrites the file now with ``phase`` (and extra fields, e.g. ``error``)."""
        status = self.status
        model = getattr(self, "model", None)  # set by SB3's init_callback when learn() begins
        steps = int(model.num_timesteps) if model is not None else status["num_timesteps"]
        elapsed = time.monotonic() - self._t0
        done = steps - status["start_timesteps"]
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        status.update(phase=phase, updated=time.time(), num_timesteps=steps, steps_per_second=rate,
                      eta_seconds=(max(status["total_timesteps"] - steps, 0) / rate) if rate else None,
                      **extra)
        try:
            write_status(self.path, status)
        except OSError as e:  # a full disk must not stop training; the console shows it as silent
            logging.getLogger("agent.train").warning("cannot write %s: %s", self.path, e)
        self._last_write = time.monotonic()
