"""``cluster=ray``: one Ray actor per sim, placed by a custom resource and restarted by Ray.

Ray runs only on the trainer's Python: each actor is a process of the trainer's venv on some node, and
starts there, as an ordinary child, a ``carla_client`` under that node's sim interpreter
(launch.interpreters' lookup, on that node). The bridge stays what it is; Ray only decides where
each sim lives and brings it back when its process or its node dies (``cluster.max_restarts``).

Sim ``i`` listens on port ``clients.base_port + i`` of whichever node hosts it. ``cluster.bind``
says on which address: ``loopback`` (``clients.host``, 127.0.0.1 by default: every node that hosts
sims must be the trainer's machine, e.g. the tests' ``ray.cluster_utils.Cluster``) or ``node`` (the
node's IP address, with CurveZMQ keys from the same ``curve`` directory on every node). A sim that Ray
restarts on another node moves: the placement writes every sim's current endpoint to
``logs/endpoints.json``, which the trainer's envs read when they reconnect. See docs/scale.md.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from bridge.keys import CurveError, load_server_keys
from launch import commands
from launch.config import LaunchConfig
from launch.console import ProcessRow
from launch.interpreters import REPO_ROOT, find_sim_python
from launch.placement import Placement, Supervision, check_client_ports, check_trainer_keys
from launch.procs import (PROBE_SECONDS, LaunchError, ManagedProcess, NotReady, child_env,
                          port_is_free, wait_bridge, wait_tcp)

log = logging.getLogger("launch")

#: seconds between two health checks of the sim actors.
WATCH_SECONDS = 1.0


def import_ray() -> Any:
    """Raises: LaunchError when Ray is not installed (it is the optional ``[cluster]`` extra)."""
    try:
        import ray
    except ImportError as e:
        raise LaunchError("cluster=ray needs Ray in the trainer's venv: pip install -e .[train,cluster] "
                          "(or run with cluster=local)") from e
    return ray


def node_address() -> str:
    """The IP address of the Ray node this process runs on (what the other nodes reach it by)."""
    import ray.util

    return ray.util.get_node_ip_address()


class SimActor:
    """The body of one sim's Ray actor: runs ``carla_client`` ``index`` on the actor's node.

    Construction starts the process and returns once it is ready, so a restarted actor is ready when
    Ray reports it alive: it answers a bridge ping (without CURVE), or accepts TCP connections on its
    port (with CURVE: the ping needs the trainer's secret key, which stays on the trainer's host; the
    launcher pings it from there). ``check()`` turns a carla_client that died on its own into an actor
    death, so that Ray's restart (bounded by ``max_restarts``) is the only restart mechanism. The
    process dies with the actor (PR_SET_PDEATHSIG), also when the actor's node is removed.

    Raises (construction): LaunchError: no sim interpreter or no usable CURVE server keys on this
    node, the port stays taken, or the sim is not ready in time.
    """

    def __init__(self, config: LaunchConfig, index: int, logs_dir: str) -> None:
        sim_python, why = find_sim_python(config.interpreters.sim_python, "interpreters.sim_python")
        if sim_python is None:
            raise LaunchError(f"no sim interpreter on this node: {why}")
        self.index = index
        host = node_address() if config.cluster.bind == "node" else config.clients.host
        port = config.clients.base_port + index
        self.endpoint = config.clients.endpoint(index, host)
        if config.curve:
            check_server_keys(commands.curve_dir(config), host)
        deadline = time.monotonic() + config.clients.ready_timeout
        while not port_is_free(host, port):  # the previous incarnation's carla_client is exiting
            if time.monotonic() > deadline:
                raise LaunchError(f"port {port} on {host} stayed in use; carla_client-{index} cannot "
                                  "bind it")
            time.sleep(PROBE_SECONDS)
        self.process = ManagedProcess(f"carla_client-{index}",
                                      commands.client_argv(config, index, sim_python, host),
                                      Path(logs_dir) / f"carla_client-{index}.log", env=child_env(),
                                      cwd=REPO_ROOT)
        self.process.start()
        try:
            if config.curve:
                wait_tcp(host, port, deadline, self.process)
            else:
                wait_bridge(self.endpoint, deadline, self.process)
        except NotReady:
            self.process.stop(timeout=config.clients.stop_timeout)
            raise

    def info(self) -> dict[str, Any]:
        """Where this sim runs: endpoint, carla_client pid, the actor's pid and Ray node id."""
        import ray

        return {"endpoint": self.endpoint, "pid": self.process.pid, "argv": self.process.argv,
                "actor_pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def check(self) -> tuple[int, str, str]:
        """(the carla_client's pid, its endpoint, the Ray node id) while it runs; if it died, this
        actor exits and Ray restarts it."""
        import ray

        if self.process.alive():
            return self.process.pid or 0, self.endpoint, ray.get_runtime_context().get_node_id()
        self.process.report_exit()
        os._exit(1)  # an actor crash: Ray reruns __init__ on a node with a free sim resource

    def stop(self, timeout: float) -> int | None:
        """Stops the carla_client (SIGTERM: it restores CARLA's settings); returns its exit code."""
        return self.process.stop(timeout=timeout)


def check_server_keys(directory: str, host: str) -> None:
    """Raises LaunchError unless ``directory`` on this node holds the sim side's CURVE keys."""
    try:
        load_server_keys(directory)
    except CurveError as e:
        raise LaunchError(f"node {host} cannot serve with CURVE: {e}. Every node that hosts sims "
                          f"needs the key directory at the same path, {directory} (server.key, "
                          "server.key_secret, client.key; docs/scale.md)") from e


class RayPlacement(Placement):
    """The sims as Ray actors on the nodes that advertise ``cluster.sim_resource``, spread out.

    Connects to ``cluster.address`` (``auto``: the cluster ``ray start --head`` started on this
    host), or starts a local Ray instance offering one sim resource per client.
    """

    def __init__(self, config: LaunchConfig, sim_python: str, supervision: Supervision) -> None:
        super().__init__(config, sim_python, supervision)
        self.actors: list[Any] = []
        self.pids: list[int | None] = []
        self._ray: Any = None
        self._owns_ray = False
        self._pending: dict[int, Any] = {}
        self._died: set[int] = set()
        self._next_watch = 0.0
        self._stopped = False
        #: each sim's endpoint as first reported (what the trainer is given), and where it is now.
        self._first: list[str] = []
        self._current: list[str] = []
        self._nodes: list[str] = []  # each sim's Ray node id when it was last (re)started
        self._restarts: list[int] = []

    def endpoints(self) -> list[str]:
        """The endpoints the sims reported when they started (before: loopback's, or none)."""
        if self._first:
            return list(self._first)
        return self.config.clients.endpoints() if self.config.cluster.bind == "loopback" else []

    def remote_rows(self) -> list[ProcessRow]:
        """One row per sim actor: its endpoint and node while up, ``restarting`` while Ray restarts it."""
        rows = []
        for index, (endpoint, node) in enumerate(zip(list(self._current), list(self._nodes))):
            down = index in self._died
            rows.append(ProcessRow(f"carla_client-{index}",
                                   "restarting (Ray)" if down else f"{endpoint} on node {node[:8]}",
                                   self._restarts[index],
                                   self.supervision.logs_dir / f"carla_client-{index}.log", not down))
        return rows

    def endpoints_file(self) -> Path | None:
        """``logs/endpoints.json`` with ``cluster.bind: node``: a restarted sim may be on another node."""
        if self.config.cluster.bind == "node":
            return self.supervision.logs_dir / "endpoints.json"
        return None

    def check_free(self) -> None:
        """Loopback: the ports are free here. Node: nothing to check here (each actor checks its
        node's port). With ``curve``: the trainer's keys load on this host."""
        if self.config.cluster.bind == "loopback":
            check_client_ports(self.config)  # the sims bind on this machine
        check_trainer_keys(self.curve)
        import_ray()

    def start(self) -> None:
        ray = self._ray = import_ray()
        cluster, count = self.config.cluster, self.config.clients.count
        options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        try:
            if cluster.address:
                log.info("ray: connecting to the cluster at %s", cluster.address)
                ray.init(address=cluster.address, **options)
            else:
                log.info("ray: starting a local instance with %d %s", count, cluster.sim_resource)
                ray.init(resources={cluster.sim_resource: count}, **options)
                self._owns_ray = True
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"reach the Ray cluster at {cluster.address}" if cluster.address else "start Ray"
            raise LaunchError(f"cannot {where}: {e} (for a cluster: is `ray start --head` running "
                              "there? `ray status` tells)") from e
        offered = ray.cluster_resources().get(cluster.sim_resource, 0)
        if offered < count:
            raise LaunchError(
                f"the Ray cluster offers {offered:g} {cluster.sim_resource!r} and {count} sims need one "
                f"each: start more nodes with `ray start --address=... --resources='{{\"{cluster.sim_resource}"
                f"\": N}}'`, or lower clients.count")
        actor_class = ray.remote(SimActor).options(
            resources={cluster.sim_resource: 1}, num_cpus=0, max_restarts=cluster.max_restarts,
            max_task_retries=0, scheduling_strategy="SPREAD")
        self.actors = [actor_class.remote(self.config, index, str(self.supervision.logs_dir))
                       for index in range(count)]
        infos = self._gather([actor.info.remote() for actor in self.actors],
                             cluster.ready_timeout, "the sim actors to start")
        self.pids = [info["pid"] for info in infos]
        self._first = [info["endpoint"] for info in infos]
        self._current = list(self._first)
        self._nodes = [info["node_id"] for info in infos]
        self._restarts = [0] * count
        nodes = set(self._nodes)
        for index, info in enumerate(infos):
            self.supervision.record(f"carla_client-{index}", info["pid"], info["argv"])
        if self.curve:
            self._ping_with_keys(cluster.ready_timeout)
        for index, info in enumerate(infos):
            log.info("carla_client-%d: answers on %s%s (Ray node %s, pid %d)", index,
                     info["endpoint"], " with CURVE" if self.curve else "", info["node_id"][:8],
                     info["pid"])
        self._write_endpoints()
        log.info("ray: %d sims on %d node(s)", count, len(nodes))

    def _ping_with_keys(self, timeout: float) -> None:
        """Pings every sim from this host with the trainer's CURVE keys: the keys match and the
        ports are reachable from here (a firewall shows here, not as a trainer's timeout)."""
        deadline = time.monotonic() + timeout
        for index, endpoint in enumerate(self._first):
            try:
                wait_bridge(endpoint, deadline, None, self.supervision.stop_requested, self.curve)
            except NotReady as e:
                raise LaunchError(
                    f"carla_client-{index} runs but does not answer a CURVE ping from this host at "
                    f"{endpoint}: {e}. Is its port open in the node's firewall, and is {self.curve} "
                    "the same key directory on both hosts (server.key, client.key)? See "
                    f"{self.supervision.logs_dir / f'carla_client-{index}.log'} on that node") from e

    def _write_endpoints(self) -> None:
        """``logs/endpoints.json``: {"endpoints": {first endpoint: current endpoint}} (atomically)."""
        path = self.endpoints_file()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"endpoints": dict(zip(self._first, self._current))}, indent=2))
        tmp.replace(path)

    def _gather(self, refs: list[Any], timeout: float, what: str) -> list[Any]:
        """ray.get that gives up on a stop request or at the deadline, with an actionable error."""
        ray = self._ray
        deadline = time.monotonic() + timeout
        pending = list(refs)
        while pending:
            if self.supervision.stop_requested():
                raise LaunchError(f"stopped while waiting for {what}")
            if time.monotonic() > deadline:
                raise LaunchError(f"gave up waiting {timeout:g} s for {what}: are there nodes with "
                                  f"free {self.config.cluster.sim_resource!r}? See runs/<run>/logs/"
                                  "carla_client-<i>.log and `ray status`")
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=PROBE_SECONDS)
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as e:
            raise LaunchError(f"a sim actor failed while waiting for {what}: {e}") from e

    def watch(self) -> None:
        """Checks each actor about once a second without blocking; a restart shows as a new pid."""
        now = time.monotonic()
        if now < self._next_watch:
            return
        self._next_watch = now + WATCH_SECONDS
        ray = self._ray
        for index, actor in enumerate(self.actors):
            ref = self._pending.pop(index, None)
            if ref is None:
                self._pending[index] = actor.check.remote()
                continue
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                self._pending[index] = ref  # busy, or being restarted: ask again next time
                continue
            try:
                pid, endpoint, node = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                self._note_death(index, "is being restarted by Ray")
                continue
            except ray.exceptions.ActorDiedError as e:
                if index in self._died:  # died again before answering: no restart left
                    raise LaunchError(
                        f"carla_client-{index} died and Ray does not restart it again "
                        f"(cluster.max_restarts={self.config.cluster.max_restarts}): {e}. See "
                        f"{self.supervision.logs_dir / f'carla_client-{index}.log'}") from e
                self._note_death(index, "died")
                continue
            self._died.discard(index)
            if pid != self.pids[index]:
                moved = endpoint != self._current[index]
                log.info("carla_client-%d: restarted by Ray (pid %s), %s %s; the trainer's env "
                         "reconnects", index, pid, "moved to" if moved else "answers on", endpoint)
                self.pids[index] = pid
                self._current[index] = endpoint
                self._nodes[index] = node
                self._restarts[index] += 1
                if moved:
                    self._write_endpoints()
                self.supervision.record(f"carla_client-{index}", pid, ["(restarted by Ray)"])

    def _note_death(self, index: int, what: str) -> None:
        if index not in self._died:
            log.warning("carla_client-%d: its actor %s (its process or node died); the trainer's "
                        "env reconnects once it is back", index, what)
        self._died.add(index)

    def stop(self) -> None:
        """Stops every carla_client (in parallel), kills the actors without restart, leaves Ray."""
        if self._stopped or self._ray is None:
            return
        self._stopped = True
        ray = self._ray
        timeout = 0.0 if self.supervision.hurry() else self.config.clients.stop_timeout
        refs = [actor.stop.remote(timeout) for actor in self.actors]
        try:
            ray.wait(refs, num_returns=len(refs), timeout=timeout + 10)
        except ray.exceptions.RayError as e:  # an actor already gone: its process went with it
            log.debug("ray: %s", e)
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        ray.shutdown()  # also stops the local instance when this launcher started it
