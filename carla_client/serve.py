"""Serves a WorldBackend over the bridge: the glue between bridge.server and a world."""
import logging
import time
from typing import Any, Dict, Optional

import numpy as np

from bridge.schema import VehicleControl
from bridge.server import SessionHandler
from bridge.spec import Tick
from carla_client.backend import WorldBackend

logger = logging.getLogger(__name__)


class WorldSessionHandler(SessionHandler):
    """Adapts a WorldBackend to the server's SessionHandler and logs the tick rate.

    Args:
        backend: the world to serve.
        log_every: seconds between tick-rate log lines.
    """

    def __init__(self, backend: WorldBackend, log_every: float = 10.0) -> None:
        self.backend = backend
        self.log_every = log_every
        self._ticks = 0
        self._window_start = time.monotonic()
        self._last_frame = None  # type: Optional[int]

    def describe(self) -> Dict[str, Any]:
        description = {"name": self.backend.name, "version": self.backend.version,
                       "spec": self.backend.spec(),
                       "snapshot": bool(self.backend.supports_snapshot),
                       "deterministic": bool(self.backend.deterministic),
                       "settings": self.backend.settings()}  # type: Dict[str, Any]
        if self.backend.tick_latency > 0:
            description["tick_latency_seconds"] = float(self.backend.tick_latency)
        budget = self.backend.step_budget()
        if budget is not None:
            description["step_budget_seconds"] = float(budget)
        return description

    def open_session(self) -> None:
        self.backend.start()

    def reset(self, seed: Optional[int], options: Dict[str, Any]) -> Dict[str, Any]:
        return self._reply(self.backend.reset(seed, options))

    def step(self, action: Dict[str, np.ndarray]) -> Dict[str, Any]:
        tick = self.backend.step(VehicleControl.from_fields(action))
        if self._last_frame is not None and tick.frame != self._last_frame + 1:
            logger.warning("frame jumped from %d to %d: the world was ticked by someone else",
                           self._last_frame, tick.frame)
        self._count_tick()
        return self._reply(tick)

    def snapshot(self) -> Any:
        return self.backend.snapshot()

    def restore(self, state: Any) -> Dict[str, Any]:
        return self._reply(self.backend.restore(state))  # the clock goes back: no "frame jumped"

    def close_session(self) -> None:
        self._last_frame = None
        self.backend.stop()
        stats = {k: v for k, v in self.backend.stats().items() if v}
        if stats:
            logger.info("%s world so far: %s", self.backend.name, _format_stats(stats))

    def _reply(self, tick: Tick) -> Dict[str, Any]:
        self._last_frame = tick.frame
        return {"frame": int(tick.frame), "sim_time": float(tick.sim_time),
                "observation": tick.observation, "measurements": tick.measurements,
                "events": tick.events}

    def _count_tick(self) -> None:
        self._ticks += 1
        elapsed = time.monotonic() - self._window_start
        if elapsed >= self.log_every:
            stats = {k: v for k, v in self.backend.stats().items() if v}
            logger.info("%.1f ticks/s over the last %.0f s (frame %s)%s", self._ticks / elapsed,
                        elapsed, self._last_frame, "; " + _format_stats(stats) if stats else "")
            self._ticks, self._window_start = 0, time.monotonic()


def _format_stats(stats: Dict[str, int]) -> str:
    return ", ".join("{} {}".format(k.replace("_", " "), v) for k, v in sorted(stats.items()))
