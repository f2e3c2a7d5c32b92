"""``python -m launch up``: start CARLA, carla_clients, trainer and TensorBoard; supervise; stop in order.

What is supervised lives here (the run, the trainer, TensorBoard, signals, the order of starting and
stopping); where the sims run is a placement's business (launch/placement.py).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from agent.status import read_status, status_path
from launch import commands
from launch.console import ProcessRow, Snapshot, make_console, trainer_health
from launch.config import LaunchConfig, default_run_name, resolve_interpreters
from launch.placement import LocalPlacement, Placement, SimClient, Supervision
from launch.procs import (PROBE_SECONDS, LaunchError, ManagedProcess, NotReady, describe_exit,
                          first_free_port, shell_status, wait_http)
from launch.restart import RestartLimiter  # noqa: F401  (launch.supervisor.RestartLimiter, as before)

log = logging.getLogger("launch")

#: the route polled until TensorBoard serves (its core plugin's; present in TensorBoard 2.x).
TENSORBOARD_READY_ROUTE = "/data/logdir"


class Launcher:
    """Runs one training setup from start to stop (see docs/launch.md).

    Args:
        config: the launcher's configuration.
        trainer_overrides: agent config overrides (``key=value``) after the launcher's own.
        keep_tensorboard: after the trainer finishes, keep TensorBoard until Ctrl-C.
        keep_tensorboard_seconds: ... or for this many seconds.
        resume: continue this run (its directory, or a checkpoint in it) with ``agent.train --resume``.
        launcher_python: the default trainer interpreter.
    """

    def __init__(self, config: LaunchConfig, trainer_overrides: Sequence[str] = (),
                 keep_tensorboard: bool = False, keep_tensorboard_seconds: float = 0.0,
                 resume: Path | None = None, launcher_python: str = sys.executable,
                 log_handler: logging.StreamHandler | None = None) -> None:
        self.config = config
        self.log_handler = log_handler  # the console routes it above its live panel
        self.resume = resume
        self.keep_tensorboard = keep_tensorboard
        self.keep_tensorboard_seconds = keep_tensorboard_seconds
        self.launcher_python = launcher_python
        run_keys, overrides = commands.split_trainer_overrides(
            list(config.trainer.overrides) + list(trainer_overrides))
        self.trainer_overrides = []
        for item in overrides:
            if item.partition("=")[0].strip() in commands.LAUNCHER_OWNED_TRAINER_KEYS:
                log.warning("ignoring the trainer override %r: the launcher sets it from clients.*",
                            item)
            else:
                self.trainer_overrides.append(item)
        if resume is not None:
            self.run_dir = commands.run_dir_of(resume)
            self.runs_dir, self.run_name = self.run_dir.parent, self.run_dir.name
        else:
            self.runs_dir = Path(run_keys.get("runs_dir") or config.runs_dir).expanduser().resolve()
            self.run_name = (config.run_name or run_keys.get("run_name")
                             or default_run_name(self.runs_dir))
            self.run_dir = self.runs_dir / self.run_name
        self.logs_dir = self.run_dir / "logs"
        self.state_path = self.logs_dir / "launcher.json"
        self.sim_python = ""
        self.trainer_python = ""
        self.placement: Placement | None = None
        self.trainer: ManagedProcess | None = None
        self.tensorboard: ManagedProcess | None = None
        self.tensorboard_url: str | None = None
        self._started: list[dict[str, Any]] = []
        self._stop_signal: int | None = None
        self._signal_count = 0
        self._shutting_down = False
        self.console: Any = None

    @property
    def servers(self) -> list[ManagedProcess]:
        """The CARLA servers the launcher started on this machine."""
        return self.placement.servers if self.placement is not None else []

    @property
    def clients(self) -> list[SimClient]:
        """The carla_clients running on this machine."""
        return self.placement.clients if self.placement is not None else []

    # ---------------------------------------------------------------- signals

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal_count += 1
        if self._stop_signal is None:
            self._stop_signal = signum
        if self._signal_count == 2:
            # A second Ctrl-C: skip the grace periods (logging from a handler is safe enough here:
            # the main thread is only ever waiting on processes or sockets).
            log.warning("second %s: not waiting any longer, killing what is left",
                        signal.Signals(signum).name)

    def stop_requested(self) -> bool:
        return self._stop_signal is not None

    def _hurry(self) -> bool:
        return self._signal_count >= 2

    # ---------------------------------------------------------------- main

    def run(self) -> int:
        """Starts everything, supervises until the trainer exits or a signal arrives, stops everything.

        Returns:
            the trainer's exit code (128 + N if it died of signal N); 128 + N when the launcher was
            stopped by signal N before the trainer finished; 1 when the launch failed.
        """
        handled = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        code = 1
        try:
            self._prepare()
            self.console = make_console(self.config.console, self.snapshot, self.log_handler)
            if self.console is not None:
                self.console.start()
            log.info("run %s: logs in %s", self.run_name, self.logs_dir)
            assert self.placement is not None  # _prepare chose it
            self.placement.start()
            self._start_trainer()
            if self.config.tensorboard.enabled:
                self._start_tensorboard()
            code = self._supervise()
        except LaunchError as e:
            if self.stop_requested():
                log.info("stopped by %s during start-up", signal.Signals(self._stop_signal).name)
                code = 128 + self._stop_signal
            else:
                log.error("%s", e)
                code = 1
        finally:
            self._shutting_down = True
            try:
                self._stop_all()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                if self.console is not None:
                    self.console.update(final=True)
                    self.console.stop()
        log.info("launcher exits with %d", code)
        return code

    def _prepare(self) -> None:
        if self.resume is not None and not self.resume.exists():
            raise LaunchError(f"--resume {self.resume}: no such run directory or checkpoint")
        sim, sim_from, trainer, trainer_from = resolve_interpreters(self.config, self.launcher_python)
        if not sim or not os.access(sim, os.X_OK):
            raise LaunchError(f"no sim-side interpreter ({sim or 'none'}; {sim_from}): run "
                              "`python3 scripts/setup_envs.py`, or set interpreters.sim_python=PATH")
        if not os.access(trainer, os.X_OK):
            raise LaunchError(f"the trainer interpreter {trainer} ({trainer_from}) is not executable: "
                              "run `python3 scripts/setup_envs.py` or set interpreters.trainer_python")
        self.sim_python, self.trainer_python = sim, trainer
        supervision = Supervision(self._process, self.stop_requested, self._abort_wait, self._hurry,
                                  self.logs_dir, self._record)
        if self.config.cluster.kind == "ray":
            from launch.ray_placement import RayPlacement  # Ray is an optional extra ([cluster])

            self.placement = RayPlacement(self.config, sim, supervision)
        else:
            self.placement = LocalPlacement(self.config, sim, supervision)
        self.placement.check_free()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._write_state()

    # ---------------------------------------------------------------- console

    def snapshot(self) -> Snapshot:
        """What the console shows now (called from the console's refresh thread too: reads only)."""
        rows = [self._row(server) for server in list(self.servers)]
        for client in list(self.clients):
            row = self._row(client.process)
            if client.restart_at is not None:
                row.state, row.ok = "restarting", False
            rows.append(row)
        if self.placement is not None:
            rows += self.placement.remote_rows()
        status = read_status(status_path(self.run_dir))
        trainer_row = None
        if self.trainer is not None:
            trainer = self.trainer
            alive = trainer.alive()
            text, ok = trainer_health(status, alive, describe_exit(trainer.returncode),
                                      trainer.started_at, time.time())
            trainer_row = ProcessRow(trainer.name, text, max(trainer.starts - 1, 0), trainer.log_path,
                                     ok)
            rows.append(trainer_row)
        if self.tensorboard is not None:
            rows.append(self._row(self.tensorboard))
        return Snapshot(self.run_name, self.tensorboard_url, rows, status, trainer_row)

    @staticmethod
    def _row(process: ManagedProcess) -> ProcessRow:
        if process.proc is None:
            return ProcessRow(process.name, "not started", 0, process.log_path)
        code = process.returncode
        state = "running" if code is None else f"exited {describe_exit(code)}"
        return ProcessRow(process.name, state, max(process.starts - 1, 0), process.log_path,
                          code is None or code == 0)

    # ---------------------------------------------------------------- starting

    def _process(self, name: str, argv: list[str], cwd: str | Path | None = None) -> ManagedProcess:
        """A child logged to logs/<name>.log whose every start is recorded in launcher.json."""
        return ManagedProcess(name, argv, self.logs_dir / f"{name}.log", env=commands.child_env(),
                              cwd=cwd, on_start=self._record_start)

    def _record_start(self, process: ManagedProcess) -> None:
        self._record(process.name, process.pid, process.argv)

    def _record(self, name: str, pid: int | None, argv: Sequence[str]) -> None:
        """Adds a started process to launcher.json (its pid, its start number and command line)."""
        start = sum(1 for p in self._started if p["name"] == name) + 1
        self._started.append({"name": name, "pid": pid, "start": start, "time": time.time(),
                              "argv": list(argv)})
        self._write_state()

    def _write_state(self) -> None:
        """launcher.json: every pid this launcher started (a test or a user can check they are gone)."""
        state = {"launcher_pid": os.getpid(), "run_name": self.run_name, "run_dir": str(self.run_dir),
                 "endpoints": (self.placement.endpoints() if self.placement is not None
                               else self.config.clients.endpoints()),
                 "tensorboard_url": self.tensorboard_url,
                 "processes": self._started}
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def _abort_wait(self) -> bool:
        return self.stop_requested() or (self.trainer is not None and not self.trainer.alive()
                                         and not self._shutting_down)

    def _start_trainer(self) -> None:
        assert self.placement is not None
        argv = commands.trainer_argv(self.config, self.trainer_python, self.run_name, self.runs_dir,
                                     self.placement.endpoints(), self.trainer_overrides,
                                     self.resume, self.placement.endpoints_file())
        self.trainer = self._process("trainer", argv)
        self.trainer.start()

    def _start_tensorboard(self) -> None:
        tb = self.config.tensorboard
        skip = [self.config.clients.base_port + i for i in range(self.config.clients.count)]
        port = tb.port
        for attempt in range(3):  # another program may grab the port between our check and its bind
            port = first_free_port(tb.host, port, skip=skip)
            if port != tb.port and attempt == 0:
                log.info("tensorboard: port %d is taken; using %d", tb.port, port)
            self.tensorboard = self._process(
                "tensorboard", commands.tensorboard_argv(self.config, self.trainer_python, self.run_dir,
                                                         port))
            self.tensorboard.start()
            url = f"http://{tb.host}:{port}"
            trainer = self.trainer
            try:
                wait_http(url + TENSORBOARD_READY_ROUTE, time.monotonic() + tb.ready_timeout,
                          self.tensorboard,
                          lambda: self.stop_requested() or (trainer is not None and not trainer.alive()))
            except NotReady as e:
                if self.stop_requested():
                    raise LaunchError(str(e)) from e
                if trainer is not None and not trainer.alive():
                    return  # the trainer already exited: _supervise reports it, _stop_all stops TensorBoard
                self.tensorboard.stop(timeout=tb.stop_timeout)
                log.warning("tensorboard: %s", e)
                port += 1
                continue
            self.tensorboard_url = url + "/"
            self._write_state()
            log.info("TensorBoard: %s", self.tensorboard_url)
            print(f"TensorBoard for run {self.run_name}: {self.tensorboard_url}", flush=True)
            return
        log.warning("tensorboard: giving up (see %s); training goes on without it. Start it by hand: "
                    "%s -m tensorboard.main --logdir %s", self.logs_dir / "tensorboard.log",
                    self.trainer_python, self.run_dir)

    # ---------------------------------------------------------------- supervising

    def _supervise(self) -> int:
        assert self.trainer is not None and self.placement is not None
        tensorboard_reported = False
        while True:
            if self.stop_requested():
                log.info("%s received: stopping the run (the trainer saves a checkpoint first)",
                         signal.Signals(self._stop_signal).name)
                return 128 + self._stop_signal
            code = self.trainer.report_exit()
            if code is not None:
                if code != 0:
                    log.warning("trainer: last lines of %s:\n%s", self.trainer.log_path,
                                self.trainer.log_tail(25))
                self._after_training()
                return shell_status(code)
            self.placement.watch()
            if (self.tensorboard is not None and not self.tensorboard.alive()
                    and not tensorboard_reported):
                tensorboard_reported = True
                log.warning("tensorboard: exited with %s (see %s); training goes on",
                            describe_exit(self.tensorboard.returncode), self.tensorboard.log_path)
            if self.console is not None:
                self.console.update()
            self.trainer.wait(PROBE_SECONDS)

    def _after_training(self) -> None:
        """Stops the sim side; keeps TensorBoard up if asked, until Ctrl-C or the time is up."""
        if self.tensorboard is None or not self.tensorboard.alive():
            return
        if not (self.keep_tensorboard or self.keep_tensorboard_seconds > 0):
            return
        self.placement.stop()
        if self.keep_tensorboard:
            print(f"Training finished; TensorBoard stays up at {self.tensorboard_url}. Press Ctrl-C "
                  "to stop it.", flush=True)
            deadline = float("inf")
        else:
            log.info("keeping TensorBoard at %s for %.0f s", self.tensorboard_url,
                     self.keep_tensorboard_seconds)
            deadline = time.monotonic() + self.keep_tensorboard_seconds
        while (not self.stop_requested() and self.tensorboard.alive()
               and time.monotonic() < deadline):
            self.tensorboard.wait(min(1.0, max(0.0, deadline - time.monotonic())))

    # ---------------------------------------------------------------- stopping

    def _stop_all(self) -> None:
        """Stops in order: the trainer (SIGINT: it saves a checkpoint), the sims (their clients with
        SIGTERM: they restore CARLA's settings; then the CARLA servers), TensorBoard. Each is given
        its grace period, then its process group gets SIGTERM and SIGKILL. Idempotent."""
        if self.trainer is not None:
            self.trainer.stop(signal.SIGINT, self.config.trainer.stop_timeout, self._hurry)
        if self.placement is not None:
            self.placement.stop()
        if self.tensorboard is not None:
            self.tensorboard.stop(signal.SIGTERM, self.config.tensorboard.stop_timeout, self._hurry)
