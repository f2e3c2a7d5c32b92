"""``cluster=ray``: one Ray actor per sim, placed by a custom resource and restarted by Ray.

Ray runs only on the trainer's Python: each actor is a process of the trainer's venv on some node, and
starts there, as an ordinary child, a ``carla_client`` under that node's sim interpreter
(launch.interpreters' lookup, on that node). The bridge stays what it is; Ray only decides where
each sim lives and brings it back when its process or its node dies (``cluster.max_restarts``).

Sim ``i`` binds ``tcp://clients.host:(clients.base_port + i)`` on whichever node hosts it, so its
endpoint survives a restart and the trainer's env simply reconnects. Until the bridge has CURVE keys
the endpoints stay on loopback: every node that hosts sims must be the trainer's own machine (a Ray
cluster of several nodes on one host, as the tests build with ``ray.cluster_utils.Cluster``); see
docs/scale.md.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from launch import commands
from launch.config import LaunchConfig
from launch.interpreters import REPO_ROOT, find_sim_python
from launch.placement import Placement, Supervision, check_client_ports
from launch.procs import (PROBE_SECONDS, LaunchError, ManagedProcess, NotReady, child_env,
                          port_is_free, wait_bridge)

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


class SimActor:
    """The body of one sim's Ray actor: runs ``carla_client`` ``index`` on the actor's node.

    Construction starts the process and returns once it answers a bridge ping, so a restarted actor
    is ready when Ray reports it alive. ``check()`` turns a carla_client that died on its own into an
    actor death, so that Ray's restart (bounded by ``max_restarts``) is the only restart mechanism.
    The process dies with the actor (PR_SET_PDEATHSIG), also when the actor's node is removed.
    """

    def __init__(self, config: LaunchConfig, index: int, logs_dir: str) -> None:
        sim_python, why = find_sim_python(config.interpreters.sim_python, "interpreters.sim_python")
        if sim_python is None:
            raise LaunchError(f"no sim interpreter on this node: {why}")
        self.index = index
        self.endpoint = config.clients.endpoints()[index]
        deadline = time.monotonic() + config.clients.ready_timeout
        host, port = config.clients.host, config.clients.base_port + index
        while not port_is_free(host, port):  # the previous incarnation's carla_client is exiting
            if time.monotonic() > deadline:
                raise LaunchError(f"port {port} on {host} stayed in use; carla_client-{index} cannot "
                                  "bind it")
            time.sleep(PROBE_SECONDS)
        self.process = ManagedProcess(f"carla_client-{index}",
                                      commands.client_argv(config, index, sim_python),
                                      Path(logs_dir) / f"carla_client-{index}.log", env=child_env(),
                                      cwd=REPO_ROOT)
        self.process.start()
        try:
            wait_bridge(self.endpoint, deadline, self.process)
        except NotReady:
            self.process.stop(timeout=config.clients.stop_timeout)
            raise

    def info(self) -> dict[str, Any]:
        """Where this sim runs: endpoint, carla_client pid, the actor's pid and Ray node id."""
        import ray

        return {"endpoint": self.endpoint, "pid": self.process.pid, "argv": self.process.argv,
                "actor_pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def check(self) -> int:
        """The carla_client's pid while it runs; if it died, this actor exits and Ray restarts it."""
        if self.process.alive():
            return self.process.pid or 0
        self.process.report_exit()
        os._exit(1)  # an actor crash: Ray reruns __init__ on a node with a free sim resource

    def stop(self, timeout: float) -> int | None:
        """Stops the carla_client (SIGTERM: it restores CARLA's settings); returns its exit code."""
        return self.process.stop(timeout=timeout)


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

    def endpoints(self) -> list[str]:
        return self.config.clients.endpoints()

    def check_free(self) -> None:
        check_client_ports(self.config)  # loopback-only: the sims bind on this machine
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
        nodes = {info["node_id"] for info in infos}
        for index, info in enumerate(infos):
            self.supervision.record(f"carla_client-{index}", info["pid"], info["argv"])
            log.info("carla_client-%d: answers on %s (Ray node %s, pid %d)", index, info["endpoint"],
                     info["node_id"][:8], info["pid"])
        log.info("ray: %d sims on %d node(s)", count, len(nodes))

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
                pid = ray.get(ref)
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
                log.info("carla_client-%d: restarted by Ray (pid %s), answers on %s; the trainer's "
                         "env reconnects", index, pid, self.endpoints()[index])
                self.pids[index] = pid
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
