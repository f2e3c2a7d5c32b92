"""``python -m launch up``: start CARLA, carla_clients, trainer and TensorBoard; supervise; stop in order."""
from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from agent.status import read_status, status_path
from launch import commands
from launch.console import ProcessRow, Snapshot, make_console, trainer_health
from launch.config import LaunchConfig, RestartSection, default_run_name, resolve_interpreters
from launch.procs import (PROBE_SECONDS, LaunchError, ManagedProcess, NotReady, busy_ports,
                          describe_exit, first_free_port, port_is_free, shell_status, wait_bridge,
                          wait_http, wait_tcp)

log = logging.getLogger("launch")

#: the route polled until TensorBoard serves (its core plugin's; present in TensorBoard 2.x).
TENSORBOARD_READY_ROUTE = "/data/logdir"


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


class _Client:
    """A supervised carla_client: its process, its limiter, and a pending restart time."""

    def __init__(self, index: int, endpoint: str, process: ManagedProcess, limiter: RestartLimiter):
        self.index = index
        self.endpoint = endpoint
        self.process = process
        self.limiter = limiter
        self.restart_at: float | None = None


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
        self.servers: list[ManagedProcess] = []
        self.clients: list[_Client] = []
        self.trainer: ManagedProcess | None = None
        self.tensorboard: ManagedProcess | None = None
        self.tensorboard_url: str | None = None
        self._started: list[dict[str, Any]] = []
        self._stop_signal: int | None = None
        self._signal_count = 0
        self._shutting_down = False
        self._carla_released = False
        self.console: Any = None

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
            if self.config.world_kind == "carla":
                self._start_carla()
            self._start_clients()
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
        clients = self.config.clients
        ports = [clients.base_port + i for i in range(clients.count)]
        taken = busy_ports(clients.host, ports)
        if taken:
            raise LaunchError(
                f"port(s) {', '.join(map(str, taken))} on {clients.host} are in use, so carla_client "
                f"cannot bind them. Another launcher or carla_client may still be running (find it with "
                f"`ss -ltnp 'sport = :{taken[0]}'`, Windows: `netstat -ano | findstr :{taken[0]}`); stop "
                f"it, or pick other ports with clients.base_port=PORT")
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
        return ManagedProcess(name, argv, self.logs_dir / f"{name}.log", env=commands.child_env(),
                              cwd=cwd, on_start=self._record_start)

    def _record_start(self, process: ManagedProcess) -> None:
        self._started.append({"name": process.name, "pid": process.pid, "start": process.starts,
                              "time": time.time(), "argv": process.argv})
        self._write_state()

    def _write_state(self) -> None:
        """launcher.json: every pid this launcher started (a test or a user can check they are gone)."""
        state = {"launcher_pid": os.getpid(), "run_name": self.run_name, "run_dir": str(self.run_dir),
                 "endpoints": self.config.clients.endpoints(), "tensorboard_url": self.tensorboard_url,
                 "processes": self._started}
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def _start_carla(self) -> None:
        carla = self.config.carla
        ports = [carla.rpc_port(i) for i in range(self.config.clients.count)]
        if not carla.executable:
            for port in ports:  # servers the user started: they must answer now
                try:
                    wait_tcp(carla.host, port, time.monotonic() + 5.0, should_abort=self.stop_requested)
                except NotReady as e:
                    raise LaunchError(
                        f"no CARLA server answers on {carla.host}:{port} ({e}). Start one "
                        f"(`./CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}`), set "
                        "carla.executable so the launcher starts it, or use world=builtin") from e
            return
        taken = busy_ports("127.0.0.1", [p + k for p in ports for k in range(3)])
        if taken:
            raise LaunchError(f"CARLA's port(s) {taken} are in use (a CARLA server left running?): "
                              "stop it, or move the servers with carla.port=PORT")
        for index in range(self.config.clients.count):
            server = self._process(f"carla_server-{index}", commands.carla_server_argv(self.config, index),
                                   cwd=Path(commands.find_input(carla.executable)).parent)
            self.servers.append(server)
            server.start()
        for index, server in enumerate(self.servers):
            try:
                wait_tcp(carla.host, ports[index], time.monotonic() + carla.start_timeout, server,
                         self.stop_requested)
            except NotReady as e:
                raise LaunchError(f"CARLA server {index} did not open port {ports[index]}: {e}") from e
            log.info("carla_server-%d: answers on %s:%d", index, carla.host, ports[index])

    def _start_clients(self) -> None:
        for index, endpoint in enumerate(self.config.clients.endpoints()):
            process = self._process(f"carla_client-{index}",
                                    commands.client_argv(self.config, index, self.sim_python))
            self.clients.append(_Client(index, endpoint, process,
                                        RestartLimiter.from_config(self.config.restart)))
            process.start()
        for client in self.clients:  # they start in parallel; wait for each in turn
            reply, rtt = self._wait_client(client)
            sim = reply.get("sim") or {}
            log.info("%s: answers on %s (%s %s, protocol %s, ping %.1f ms)", client.process.name,
                     client.endpoint, sim.get("name"), sim.get("version"),
                     ".".join(map(str, reply.get("protocol") or [])), rtt * 1000)

    def _wait_client(self, client: _Client) -> tuple[dict, float]:
        """Waits for a starting client; one that exits first is restarted as its limiter allows
        (a CARLA server that accepts connections may still be loading its map)."""
        while True:
            try:
                return wait_bridge(client.endpoint,
                                   time.monotonic() + self.config.clients.ready_timeout,
                                   client.process, self._abort_wait)
            except NotReady as e:
                if self.stop_requested() or client.process.alive():  # stopped, or out of time
                    raise LaunchError(f"{client.process.name} is not ready: {e}\nRun `python -m "
                                      "launch doctor` to check the sim side.") from e
                client.process.report_exit()
                delay = client.limiter.request()
                if delay is None:
                    raise LaunchError(f"{client.process.name} never became ready and is not started "
                                      f"again ({client.limiter.refusal}): {e}\nRun `python -m launch "
                                      "doctor` to check the sim side.") from e
                log.warning("%s: exited before it was ready; starting it again in %.1f s",
                            client.process.name, delay)
                self._pause(delay)
                client.process.start()

    def _pause(self, seconds: float) -> None:
        """A back-off delay that ends early when a stop is requested."""
        deadline = time.monotonic() + seconds
        while not self.stop_requested() and time.monotonic() < deadline:
            time.sleep(min(PROBE_SECONDS, max(0.0, deadline - time.monotonic())))

    def _abort_wait(self) -> bool:
        return self.stop_requested() or (self.trainer is not None and not self.trainer.alive()
                                         and not self._shutting_down)

    def _start_trainer(self) -> None:
        argv = commands.trainer_argv(self.config, self.trainer_python, self.run_name, self.runs_dir,
                                     self.config.clients.endpoints(), self.trainer_overrides,
                                     self.resume)
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
        assert self.trainer is not None
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
            for server in self.servers:
                if not server.alive():
                    raise LaunchError(f"{server.name} exited with {describe_exit(server.returncode)}; "
                                      f"the run cannot go on without it. Last lines of "
                                      f"{server.log_path}:\n{server.log_tail()}")
            for client in self.clients:
                self._check_client(client)
            if (self.tensorboard is not None and not self.tensorboard.alive()
                    and not tensorboard_reported):
                tensorboard_reported = True
                log.warning("tensorboard: exited with %s (see %s); training goes on",
                            describe_exit(self.tensorboard.returncode), self.tensorboard.log_path)
            if self.console is not None:
                self.console.update()
            self.trainer.wait(PROBE_SECONDS)

    def _check_client(self, client: _Client) -> None:
        """Notices a crashed client and restarts it when its limiter allows (raises LaunchError if not)."""
        process = client.process
        if client.restart_at is None:
            if process.alive():
                return
            process.report_exit()
            delay = client.limiter.request()
            if delay is None:
                raise LaunchError(
                    f"{process.name} exited with {describe_exit(process.returncode)} and is not "
                    f"restarted: {client.limiter.refusal}. Last lines of {process.log_path}:\n"
                    f"{process.log_tail()}")
            log.warning("%s: crashed; restarting it in %.1f s (restart %d of this run; the trainer's "
                        "env reconnects and begins a new episode)", process.name, delay,
                        client.limiter.total)
            client.restart_at = time.monotonic() + delay
            return
        if time.monotonic() < client.restart_at:
            return
        client.restart_at = None
        if not port_is_free(self.config.clients.host, self.config.clients.base_port + client.index):
            log.warning("%s: port still in use; trying again shortly", process.name)
            client.restart_at = time.monotonic() + 1.0
            return
        process.start()
        try:
            reply, rtt = wait_bridge(client.endpoint,
                                     time.monotonic() + self.config.clients.ready_timeout, process,
                                     self._abort_wait)
        except NotReady as e:
            if self._abort_wait():
                return
            log.warning("%s: restarted but not ready: %s", process.name, e)
            process.stop(timeout=self.config.clients.stop_timeout)  # counts as another crash
            return
        log.info("%s: restarted, answers on %s (ping %.1f ms)", process.name, client.endpoint,
                 rtt * 1000)

    def _after_training(self) -> None:
        """Stops the sim side; keeps TensorBoard up if asked, until Ctrl-C or the time is up."""
        if self.tensorboard is None or not self.tensorboard.alive():
            return
        if not (self.keep_tensorboard or self.keep_tensorboard_seconds > 0):
            return
        self._stop_sim_side()
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

    def _stop_clients(self) -> None:
        processes = [c.process for c in self.clients]
        for process in processes:  # SIGTERM to all first: they restore CARLA's settings in parallel
            process.request_stop(signal.SIGTERM)
        for process in processes:
            process.stop(signal.SIGTERM, self.config.clients.stop_timeout, self._hurry)

    def _stop_servers(self) -> None:
        for process in self.servers:
            process.request_stop(signal.SIGTERM)
        for process in self.servers:
            process.stop(signal.SIGTERM, self.config.carla.stop_timeout, self._hurry)

    def _release_external_carla(self) -> None:
        """After a client crash, switches CARLA servers the launcher did not start back to async mode.

        A carla_client killed by SIGKILL cannot restore the world; its restarted successor saw a
        synchronous world and leaves it that way, and the server would wait for ticks forever.
        Servers the launcher started are simply stopped.
        """
        if (self.config.world_kind != "carla" or self.config.carla.executable or not self.sim_python
                or self._carla_released):
            return
        self._carla_released = True
        if not any(c.process.starts > 1 or (c.process.returncode or 0) < 0 for c in self.clients):
            return
        carla = self.config.carla
        for client in self.clients:
            port, tm_port = carla.rpc_port(client.index), carla.tm_port + client.index
            argv = commands.restore_async_argv(self.sim_python, carla.host, port, tm_port)
            try:
                done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      env=commands.child_env(), timeout=30, stdin=subprocess.DEVNULL)
                out = done.stdout.decode("utf-8", "replace").strip().splitlines()
                ok = done.returncode == 0
            except (OSError, subprocess.TimeoutExpired) as e:
                out, ok = [str(e)], False
            if ok:
                log.info("CARLA %s:%d: %s", carla.host, port, out[-1] if out else "checked")
            else:
                log.warning("CARLA %s:%d may still be in synchronous mode (a client crashed) and would "
                            "freeze: %s. Restart the server, or run `python PythonAPI/util/config.py "
                            "--no-sync` from CARLA's directory", carla.host, port,
                            out[-1] if out else "no output")

    def _stop_sim_side(self) -> None:
        self._stop_clients()
        self._release_external_carla()
        self._stop_servers()

    def _stop_all(self) -> None:
        """Stops in order: the trainer (SIGINT: it saves a checkpoint), the clients (SIGTERM: they
        restore CARLA's settings), TensorBoard, the CARLA servers. Each is given its grace period,
        then its process group gets SIGTERM and SIGKILL. Idempotent."""
        if self.trainer is not None:
            self.trainer.stop(signal.SIGINT, self.config.trainer.stop_timeout, self._hurry)
        self._stop_clients()
        if not self._hurry():
            self._release_external_carla()
        if self.tensorboard is not None:
            self.tensorboard.stop(signal.SIGTERM, self.config.tensorboard.stop_timeout, self._hurry)
        self._stop_servers()
