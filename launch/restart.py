"""When a crashed process may be restarted: ML-Agents' rule of k restarts per window, with back-off."""
from __future__ import annotations

import collections
import time
from typing import Callable

from launch.config import RestartSection


class RestartLimiter:
    """Decides whether (and after how long) a crashed process may be restarted.

    Unity ML-Agents' rule: at most ``max_in_window`` restarts within any ``window_seconds`` and
    ``max_total`` over the run. Restart k+1 inside the window waits ``backoff_initial * 2**k`` seconds
    (at most ``backoff_max``), so a client that dies at once is not restarted in a tight loop.

    Args:
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(self, max_in_window: int, window_seconds: float, max_total: int,
                 backoff_initial: float, backoff_max: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_in_window = max_in_window
        self.window_seconds = window_seconds
        self.max_total = max_total
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.clock = clock
        self.total = 0
        self._recent: collections.deque[float] = collections.deque()
        self.refusal = ""  # why the last request was refused

    @classmethod
    def from_config(cls, section: RestartSection,
                    clock: Callable[[], float] = time.monotonic) -> "RestartLimiter":
        return cls(section.max_in_window, section.window_seconds, section.max_total,
                   section.backoff_initial, section.backoff_max, clock)

    def in_window(self) -> int:
        """Restarts granted within the last ``window_seconds``."""
        now = self.clock()
        while self._recent and now - self._recent[0] >= self.window_seconds:
            self._recent.popleft()
        return len(self._recent)

    def request(self) -> float | None:
        """Called when the process crashed: the delay before restarting it, or None to give up."""
        recent = self.in_window()
        if self.total >= self.max_total:
            self.refusal = (f"{self.total} restarts already, the most allowed for one client "
                            "(restart.max_total)")
            return None
        if recent >= self.max_in_window:
            self.refusal = (f"{recent} restarts in the last {self.window_seconds:g} s, the most allowed "
                            "(restart.max_in_window per restart.window_seconds)")
            return None
        self._recent.append(self.clock())
        self.total += 1
        return min(self.backoff_max, self.backoff_initial * 2 ** recent)
