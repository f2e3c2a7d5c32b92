"""The launcher's console: one live ``rich`` panel in a terminal, a plain progress line elsewhere.

What it shows comes from two places: the processes the launcher supervises (running, restarted N
times, exited with X; their log files) and the trainer's status file (agent.status: steps, steps/s,
ETA, the latest episode, the torch device), which the trainer rewrites about once a second. A
trainer whose process died shows as dead at once; one that lives but stops reporting shows as
silent after ``silent_after`` seconds (longer while it runs a PPO update, which reports nothing).
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from agent.status import FINAL_PHASES

log = logging.getLogger("launch")

#: seconds between plain progress lines without a terminal.
PLAIN_INTERVAL = 30.0
#: a trainer that has not reported for this long (collecting experience) is flagged as silent.
SILENT_AFTER = 10.0
#: a PPO update reports nothing until it ends: allow this many times the previous update's duration.
UPDATE_SLACK = 3.0
#: before the first report (imports, connecting to the sims) the trainer may stay quiet this long.
STARTUP_GRACE = 120.0


@dataclass
class ProcessRow:
    """One supervised process as the console shows it."""

    name: str
    state: str              # "running", "starting", "restarting", "exited 0", "exited -9 (SIGKILL)"
    restarts: int
    log_path: Path | None
    ok: bool = True         # False: crashed, dead or silent


@dataclass
class Snapshot:
    """Everything one frame of the console shows."""

    run_name: str
    tensorboard_url: str | None
    processes: list[ProcessRow]
    status: dict[str, Any] | None
    trainer: ProcessRow | None
    extra: list[str] = field(default_factory=list)   # e.g. "live view: window open"


def trainer_health(status: dict[str, Any] | None, alive: bool | None, exit_text: str,
                   started_at: float | None, now: float, silent_after: float = SILENT_AFTER
                   ) -> tuple[str, bool]:
    """Classifies the trainer for the console: (text, ok).

    Args:
        status: its last status report (agent.status), or None.
        alive: whether its process runs (None: not started yet).
        exit_text: its exit code, described, when it is not alive.
        started_at: wall-clock time the process was started (for the start-up grace).
        now: wall-clock time.
        silent_after: seconds without a report after which a collecting trainer is silent.
    """
    if alive is None:
        return "not started", True
    if not alive:
        phase = (status or {}).get("phase")
        ok = exit_text == "0" and phase == "finished"
        return f"exited {exit_text}" + (f" ({phase})" if phase else ""), ok
    if status is None or (started_at is not None and status.get("updated", 0) < started_at - 1.0):
        waited = now - started_at if started_at is not None else 0.0
        if waited > STARTUP_GRACE:
            return f"SILENT: no report in {waited:.0f} s since it started", False
        return "starting", True
    age = max(0.0, now - float(status["updated"]))
    phase = str(status.get("phase", "?"))
    limit = silent_after
    if phase == "updating":
        limit = max(silent_after, UPDATE_SLACK * float(status.get("last_update_seconds") or 20.0))
    elif phase == "starting":
        limit = STARTUP_GRACE
    elif phase in FINAL_PHASES:
        limit = float("inf")
    if age > limit:
        return f"SILENT for {age:.0f} s (last: {phase} at step {status.get('num_timesteps', 0):,})", False
    return phase, True


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def episode_text(status: dict[str, Any] | None) -> str:
    last = (status or {}).get("last_episode")
    if not last:
        return "no episode finished yet"
    return (f"return {last['return']:.1f}, route completion {100 * last['route_completion']:.0f}%, "
            f"collisions {last['collisions']}" + (", lap completed" if last.get("lap_completed") else "")
            + f" ({status.get('episodes', 0)} episodes)")


def progress_line(snapshot: Snapshot) -> str:
    """The plain one-line summary printed without a terminal."""
    status = snapshot.status or {}
    steps, total = int(status.get("num_timesteps") or 0), int(status.get("total_timesteps") or 0)
    percent = f" ({100 * steps / total:.0f}%)" if total else ""
    rate = status.get("steps_per_second")
    parts = [f"step {steps:,}/{total:,}{percent}",
             f"{rate:.0f} steps/s" if rate else "-- steps/s",
             f"ETA {format_duration(status.get('eta_seconds'))}",
             f"last episode: {episode_text(snapshot.status)}"]
    procs = ", ".join(f"{p.name} {p.state}" + (f" (restarted {p.restarts}x)" if p.restarts else "")
                      for p in snapshot.processes)
    parts.append(procs)
    if status.get("device"):
        parts.append(f"device {status['device']}")
    if snapshot.tensorboard_url:
        parts.append(f"TensorBoard {snapshot.tensorboard_url}")
    return "progress: " + " | ".join(parts)


def render_panel(snapshot: Snapshot) -> Any:
    """The live panel (a rich renderable): progress bar, latest episode, processes, TensorBoard."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    status = snapshot.status or {}
    steps, total = int(status.get("num_timesteps") or 0), int(status.get("total_timesteps") or 0)
    rate = status.get("steps_per_second")
    bar = Table.grid(padding=(0, 1))
    bar.add_column(width=40)
    bar.add_column()
    bar.add_row(ProgressBar(total=max(total, 1), completed=min(steps, total or 1), width=40),
                Text(f"{steps:,}/{total:,} steps  {rate or 0:.0f} steps/s  "
                     f"ETA {format_duration(status.get('eta_seconds'))}", style="bold"))
    info = Table.grid(padding=(0, 1))
    info.add_column(style="dim")
    info.add_column()
    info.add_row("episode", episode_text(snapshot.status))
    info.add_row("device", str(status.get("device") or "?"))
    info.add_row("TensorBoard", snapshot.tensorboard_url or "not running")
    for line in snapshot.extra:
        key, _, value = line.partition(": ")
        info.add_row(key, value)
    procs = Table(show_edge=False, box=None, padding=(0, 1), header_style="dim")
    for name in ("process", "state", "restarts", "log"):
        procs.add_column(name)
    for p in snapshot.processes:
        procs.add_row(p.name, Text(p.state, style="green" if p.ok else "bold red"), str(p.restarts),
                      str(p.log_path or ""))
    return Panel(Group(bar, info, procs), title=f"run {snapshot.run_name}", title_align="left")


class PlainConsole:
    """Prints :func:`progress_line` at most every ``interval`` seconds (CI, nohup, a pipe).

    A trainer turning silent or dead is logged once as a warning when it happens.
    """

    def __init__(self, snapshot: Callable[[], Snapshot], stream: TextIO | None = None,
                 interval: float = PLAIN_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.snapshot = snapshot
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self._last_line = -float("inf")
        self._last_trainer_ok = True
        self.lines = 0

    def start(self) -> None:
        pass

    def update(self, final: bool = False) -> None:
        snap = self.snapshot()
        trainer_ok = snap.trainer.ok if snap.trainer is not None else True
        if self._last_trainer_ok and not trainer_ok and snap.trainer is not None:
            log.warning("trainer: %s (see %s)", snap.trainer.state, snap.trainer.log_path)
        self._last_trainer_ok = trainer_ok
        now = self.clock()
        if snap.status is None and not final:
            return  # nothing to report before the trainer's first status
        if final or now - self._last_line >= self.interval:
            print(progress_line(snap), file=self.stream or sys.stdout, flush=True)
            self._last_line = now
            self.lines += 1

    def stop(self) -> None:
        pass


class LiveConsole:
    """A ``rich.live.Live`` panel redrawn a few times per second, from its own refresh thread.

    While it runs, the launcher's log lines (``logging`` to stderr) print above the panel.
    """

    def __init__(self, snapshot: Callable[[], Snapshot], log_handler: logging.StreamHandler | None = None,
                 refresh_per_second: float = 2.0) -> None:
        self.snapshot = snapshot
        self.log_handler = log_handler
        self.refresh_per_second = refresh_per_second
        self._live: Any = None
        self._previous_stream: TextIO | None = None

    def _renderable(self) -> Any:
        try:
            return render_panel(self.snapshot())
        except Exception as e:  # a drawing bug must never stop the run
            from rich.text import Text
            return Text(f"console error: {type(e).__name__}: {e}")

    def start(self) -> None:
        from rich.live import Live
        self._live = Live(get_renderable=self._renderable, refresh_per_second=self.refresh_per_second,
                          redirect_stdout=True, redirect_stderr=True)
        self._live.start()
        if self.log_handler is not None:  # log lines go through Live's proxy, above the panel
            self._previous_stream = self.log_handler.setStream(sys.stderr)

    def update(self, final: bool = False) -> None:
        if final and self._live is not None:
            self._live.refresh()

    def stop(self) -> None:
        """Draws the last frame and gives the terminal back. Idempotent."""
        live, self._live = self._live, None
        if live is None:
            return
        try:
            live.refresh()
            live.stop()
        finally:
            if self.log_handler is not None and self._previous_stream is not None:
                self.log_handler.setStream(self._previous_stream)


def make_console(mode: str, snapshot: Callable[[], Snapshot],
                 log_handler: logging.StreamHandler | None = None, interval: float = PLAIN_INTERVAL,
                 stream: TextIO | None = None) -> PlainConsole | LiveConsole | None:
    """``auto``: the live panel when stdout is a terminal, plain lines otherwise; ``live``, ``plain``,
    or ``off`` (None)."""
    if mode == "off":
        return None
    out = stream or sys.stdout
    if mode == "live" or (mode == "auto" and out.isatty()):
        return LiveConsole(snapshot, log_handler)
    return PlainConsole(snapshot, stream, interval)
