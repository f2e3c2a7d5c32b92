"""Where the sims run: a placement starts, watches, restarts and stops the sim side of a run.

A *sim* is one ``carla_client`` (and, when the launcher starts them, its CARLA server); the trainer
reaches it at an endpoint. The supervisor (launch/supervisor.py) decides *what* runs and in which
order; a placement decides *where* and *how*: LocalPlacement runs every sim as a child process of the
launcher on this machine; a cluster placement runs them elsewhere behind the same interface.
"""
from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, NamedTuple

from bridge.keys import CurveError, load_client_keys
from bridge.transport import LOOPBACK_HOSTS
from carla_client import registry
from launch import commands
from launch.config import LaunchConfig
from launch.console import ProcessRow
from launch.procs import (PROBE_SECONDS, LaunchError, ManagedProcess, NotReady, busy_ports,
                          describe_exit, port_is_free, wait_bridge, wait_tcp)
from launch.restart import RestartLimiter

log = logging.getLogger("launch")


class Supervision(NamedTuple):
    """What a placement needs from the supervisor running it."""

    #: builds a process named ``name`` (logged under the run's logs/, recorded in launcher.json).
    make_process: Callable[[str, list[str], "str | Path | None"], ManagedProcess]
    #: a stop signal arrived: end every wait and back-off early.
    stop_requested: Callable[[], bool]
    #: stop waiting for a sim (a stop was requested, or the trainer died).
    should_abort: Callable[[], bool]
    #: a second signal arrived: skip the grace periods.
    hurry: Callable[[], bool]
    #: the run's logs/ directory (each process logs to <name>.log there).
    logs_dir: Path
    #: records a process started by other means than make_process (name, pid, command line).
    record: Callable[[str, "int | None", list[str]], None]


class Placement:
    """The sim side of one run. Subclasses say where its processes run.

    Raises (every method that starts or watches): LaunchError, saying what failed and what to do.
    """

    def __init__(self, config: LaunchConfig, sim_python: str, supervision: Supervision) -> None:
        self.config = config
        self.sim_python = sim_python
        self.supervision = supervision
        #: the CurveZMQ key directory (absolute) when ``curve`` is set: the launcher's pings use it.
        self.curve = commands.curve_dir(config) if config.curve else None
        #: the sims' processes on this machine (none for a placement that runs them elsewhere).
        self.servers: list[ManagedProcess] = []
        self.clients: list[SimClient] = []

    def endpoints(self) -> list[str]:
        """The bridge endpoints of the sims, in order (what the trainer is given)."""
        raise NotImplementedError

    def endpoints_file(self) -> Path | None:
        """A file with each sim's current endpoint when a sim can move (the trainer's envs follow
        it when they reconnect); None when the endpoints never change."""
        return None

    def remote_rows(self) -> list[ProcessRow]:
        """Console rows for sims that are not processes of this launcher (``servers``/``clients``
        have their own rows): where each runs and whether it is up."""
        return []

    def check_free(self) -> None:
        """Before anything starts: fails fast if the sims could not bind their ports."""

    def start(self) -> None:
        """Starts every sim and returns once each answers a bridge ping."""
        raise NotImplementedError

    def watch(self) -> None:
        """One supervision pass: notices sims that died and restarts them as the restart rules allow."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stops every sim in order, each within its grace period. Idempotent."""
        raise NotImplementedError


def check_client_ports(config: LaunchConfig) -> None:
    """Raises LaunchError if a carla_client's port (``clients.base_port + i``) is taken here, or if
    ``clients.host`` is beyond loopback without CurveZMQ keys (secure by default)."""
    clients = config.clients
    if clients.host not in LOOPBACK_HOSTS and not config.curve:
        raise LaunchError(
            f"clients.host={clients.host} makes every carla_client listen beyond this host, and the "
            "bridge never does that without CurveZMQ: make keys with `python -m bridge.keys DIR` and "
            "set curve=DIR, or keep clients.host=127.0.0.1 and use an SSH tunnel (docs/launch.md)")
    ports = [clients.base_port + i for i in range(clients.count)]
    taken = busy_ports(clients.host, ports)
    if taken:
        raise LaunchError(
            f"port(s) {', '.join(map(str, taken))} on {clients.host} are in use, so carla_client "
            f"cannot bind them. Another launcher or carla_client may still be running (find it with "
            f"`ss -ltnp 'sport = :{taken[0]}'`, Windows: `netstat -ano | findstr :{taken[0]}`); stop "
            f"it, or pick other ports with clients.base_port=PORT")


def check_trainer_keys(curve: str | None) -> None:
    """Raises LaunchError if ``curve`` is set and the trainer's CURVE keys do not load on this host."""
    if curve is None:
        return
    try:
        load_client_keys(curve)
    except CurveError as e:
        raise LaunchError(f"the trainer cannot use the CURVE keys: {e}") from e


class SimClient:
    """A supervised carla_client: its process, its limiter, and a pending restart time."""

    def __init__(self, index: int, endpoint: str, process: ManagedProcess, limiter: RestartLimiter):
        self.index = index
        self.endpoint = endpoint
        self.process = process
        self.limiter = limiter
        self.restart_at: float | None = None


class LocalPlacement(Placement):
    """Every sim a child process of the launcher on this machine: CARLA servers (when configured), then
    carla_clients under the sim interpreter, client ``i`` on ``clients.base_port + i``."""

    def __init__(self, config: LaunchConfig, sim_python: str, supervision: Supervision) -> None:
        super().__init__(config, sim_python, supervision)
        self._carla_released = False

    def endpoints(self) -> list[str]:
        return self.config.clients.endpoints()

    def check_free(self) -> None:
        check_client_ports(self.config)
        check_trainer_keys(self.curve)

    def start(self) -> None:
        if registry.get(self.config.world_kind).needs_server:
            self._start_carla()
        self._start_clients()

    # ---------------------------------------------------------------- starting

    def _start_carla(self) -> None:
        carla = self.config.carla
        ports = [carla.rpc_port(i) for i in range(self.config.clients.count)]
        if not carla.executable:
            for port in ports:  # servers the user started: they must answer now
                try:
                    wait_tcp(carla.host, port, time.monotonic() + 5.0,
                             should_abort=self.supervision.stop_requested)
                except NotReady as e:
                    raise LaunchError(
                        f"no {self.config.world_kind} server answers on {carla.host}:{port} ({e}). "
                        f"Start one ({registry.get(self.config.world_kind).start_hint(port)}), set "
                        "carla.executable so the launcher starts it, or use world=builtin") from e
            return
        taken = busy_ports("127.0.0.1", [p + k for p in ports for k in range(3)])
        if taken:
            raise LaunchError(f"CARLA's port(s) {taken} are in use (a CARLA server left running?): "
                              "stop it, or move the servers with carla.port=PORT")
        for index in range(self.config.clients.count):
            server = self.supervision.make_process(
                f"carla_server-{index}", commands.carla_server_argv(self.config, index),
                Path(commands.find_input(carla.executable)).parent)
            self.servers.append(server)
            server.start()
        for index, server in enumerate(self.servers):
            try:
                wait_tcp(carla.host, ports[index], time.monotonic() + carla.start_timeout, server,
                         self.supervision.stop_requested)
            except NotReady as e:
                raise LaunchError(f"CARLA server {index} did not open port {ports[index]}: {e}") from e
            log.info("carla_server-%d: answers on %s:%d", index, carla.host, ports[index])

    def _start_clients(self) -> None:
        for index, endpoint in enumerate(self.endpoints()):
            process = self.supervision.make_process(
                f"carla_client-{index}", commands.client_argv(self.config, index, self.sim_python),
                None)
            self.clients.append(SimClient(index, endpoint, process,
                                          RestartLimiter.from_config(self.config.restart)))
            process.start()
        for client in self.clients:  # they start in parallel; wait for each in turn
            reply, rtt = self._wait_client(client)
            sim = reply.get("sim") or {}
            log.info("%s: answers on %s (%s %s, protocol %s, ping %.1f ms)", client.process.name,
                     client.endpoint, sim.get("name"), sim.get("version"),
                     ".".join(map(str, reply.get("protocol") or [])), rtt * 1000)

    def _wait_client(self, client: SimClient) -> tuple[dict, float]:
        """Waits for a starting client; one that exits first is restarted as its limiter allows
        (a CARLA server that accepts connections may still be loading its map)."""
        while True:
            try:
                return wait_bridge(client.endpoint,
                                   time.monotonic() + self.config.clients.ready_timeout,
                                   client.process, self.supervision.should_abort, self.curve)
            except NotReady as e:
                if self.supervision.stop_requested() or client.process.alive():  # stopped, or late
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
        while not self.supervision.stop_requested() and time.monotonic() < deadline:
            time.sleep(min(PROBE_SECONDS, max(0.0, deadline - time.monotonic())))

    # ---------------------------------------------------------------- watching

    def watch(self) -> None:
        for server in self.servers:
            if not server.alive():
                raise LaunchError(f"{server.name} exited with {describe_exit(server.returncode)}; "
                                  f"the run cannot go on without it. Last lines of "
                                  f"{server.log_path}:\n{server.log_tail()}")
        for client in self.clients:
            self._check_client(client)

    def _check_client(self, client: SimClient) -> None:
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
                                     self.supervision.should_abort, self.curve)
        except NotReady as e:
            if self.supervision.should_abort():
                return
            log.warning("%s: restarted but not ready: %s", process.name, e)
            process.stop(timeout=self.config.clients.stop_timeout)  # counts as another crash
            return
        log.info("%s: restarted, answers on %s (ping %.1f ms)", process.name, client.endpoint,
                 rtt * 1000)

    # ---------------------------------------------------------------- stopping

    def stop(self) -> None:
        """Stops the clients (SIGTERM: they restore CARLA's settings), puts CARLA servers the launcher
        did not start back in asynchronous mode if a client crashed, then stops the servers."""
        self._stop_clients()
        if not self.supervision.hurry():
            self._release_external_carla()
        self._stop_servers()

    def _stop_clients(self) -> None:
        processes = [c.process for c in self.clients]
        for process in processes:  # SIGTERM to all first: they restore CARLA's settings in parallel
            process.request_stop(signal.SIGTERM)
        for process in processes:
            process.stop(signal.SIGTERM, self.config.clients.stop_timeout, self.supervision.hurry)

    def _stop_servers(self) -> None:
        for process in self.servers:
            process.request_stop(signal.SIGTERM)
        for process in self.servers:
            process.stop(signal.SIGTERM, self.config.carla.stop_timeout, self.supervision.hurry)

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
