"""cluster=ray on one machine: a Ray cluster of a head and two worker nodes (ray.cluster_utils.Cluster),
each advertising its own ``carla_sim`` resources; sims placed, spread, restarted and stopped."""
import os
import signal
import time

import pytest

from bridge.client import BridgeClient
from bridge.errors import BridgeError
from launch.config import load_config
from launch.placement import Supervision
from tests.test_launch import (TINY, _free_port_block, _standins, _survivors,  # noqa: F401
                               launch_run)

ray = pytest.importorskip("ray", reason="Ray is the optional [cluster] extra; not installed here")
pytestmark = [pytest.mark.slow, pytest.mark.crossversion]


@pytest.fixture(scope="module")
def cluster():
    """A head and two workers with 2 carla_sim each: 4 sims fit, also after one worker is removed."""
    from ray.cluster_utils import Cluster

    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"carla_sim": 2}})
    workers = [made.add_node(num_cpus=1, resources={"carla_sim": 2}) for _ in range(2)]
    made.wait_for_nodes()
    made.workers = workers
    yield made
    made.shutdown()


def answers(endpoint):
    try:
        with BridgeClient(endpoint, timeout=2.0, hello_timeout=2.0, heartbeat_seconds=0) as client:
            return client.ping(timeout=2.0)["protocol"] is not None
    except BridgeError:
        return False


def wait_until(condition, timeout, what, tick=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tick:
            tick()
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.timeout(300)
def test_sims_are_spread_restarted_by_ray_and_stopped(cluster, sim_python, tmp_path):
    from launch.ray_placement import RayPlacement

    base = _free_port_block(4)
    config = load_config(None, ["cluster=ray", f"cluster.address={cluster.address}",
                                f"interpreters.sim_python={sim_python}", "clients.count=4",
                                f"clients.base_port={base}", "cluster.max_restarts=2"])
    recorded = []
    supervision = Supervision(None, lambda: False, lambda: False, lambda: False, tmp_path,
                              lambda name, pid, argv: recorded.append((name, pid)))
    placement = RayPlacement(config, sim_python, supervision)
    try:
        placement.start()
        assert all(answers(e) for e in placement.endpoints())
        nodes = {ray.get(actor.info.remote())["node_id"] for actor in placement.actors}
        assert len(nodes) >= 2, "SPREAD put every sim on one node"
        assert [name for name, _ in recorded] == [f"carla_client-{i}" for i in range(4)]

        # a carla_client that dies on its own: its actor exits, Ray starts a new one, same endpoint
        first = placement.pids[0]
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: placement.pids[0] != first and answers(placement.endpoints()[0]), 90,
                   "carla_client-0 to come back", placement.watch)
        assert recorded[-1][0] == "carla_client-0"

        # a node that dies: its sims come back on the other nodes
        where = [ray.get(a.info.remote())["node_id"] for a in placement.actors]
        node = next(w for w in cluster.workers if w.node_id in where)
        on_node = [i for i, node_id in enumerate(where) if node_id == node.node_id]
        before = list(placement.pids)
        cluster.remove_node(node)
        wait_until(lambda: all(placement.pids[i] != before[i] for i in on_node)
                   and all(answers(e) for e in placement.endpoints()), 120,
                   f"the sims {on_node} of the removed node to come back", placement.watch)
    finally:
        pids = [p for _, p in recorded]
        placement.stop()
        if len(cluster.list_all_nodes()) < 3:  # give the next test its third node back
            cluster.workers[0] = cluster.add_node(num_cpus=1, resources={"carla_sim": 2})
            cluster.wait_for_nodes()
    wait_until(lambda: not _survivors(set(pids)), 30, "every carla_client to exit")


@pytest.mark.timeout(400)
def test_ppo_trains_over_four_sims_on_the_cluster_and_survives_a_killed_sim(cluster, launch_run):
    # Ticks of at least 25 ms keep training going for > 25 s after the kill, so the restarted sim is
    # back before the run ends even on a quiet machine (2048 fast steps finished before it was).
    run = launch_run(["cluster=ray", f"cluster.address={cluster.address}", "tensorboard.enabled=false",
                      "clients.extra_args=[--tick-latency-ms, '25']"],
                     ["total_timesteps=4096", *TINY], clients=4)
    run.wait_for(lambda: list(run.run_dir.glob("events.out.tfevents.*")), 240, "training to start")
    assert "ray: 4 sims on" in run.text()
    victim = run.pids("carla_client-1")[0]
    os.kill(victim, signal.SIGKILL)
    assert run.finish(300) == 0, run.log("trainer")[-3000:]
    assert (run.run_dir / "model.zip").exists()
    assert "carla_client-1: restarted by Ray" in run.text()
    assert len(run.pids("carla_client-1")) == 2
    assert "reconnecting" in run.log("trainer")
    run.assert_nothing_left()
    assert_no_shared_memory_left(run.pids())


def assert_no_shared_memory_left(pids):
    """The bridge's /dev/shm segments are named after the serving process's pid."""
    left = [name for name in os.listdir("/dev/shm") if any(
        name.startswith(f"carla-zmq-bridge-{pid}-") for pid in pids)]
    assert not left, f"shared memory left behind: {left}"


@pytest.mark.timeout(300)
def test_ctrl_c_stops_the_trainer_then_every_sim_actor(cluster, launch_run):
    run = launch_run(["cluster=ray", f"cluster.address={cluster.address}",
                      *_standins("clients.extra_args=[--step-delay, '0.004']")],
                     ["total_timesteps=100000"], clients=4)
    run.wait_for(lambda: "standin trainer: 4 envs" in run.log("trainer"), 180, "the trainer to step")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.finish(120) == 128 + signal.SIGINT
    text = run.text()
    assert text.index("trainer: stopping") < text.index("trainer: pid")  # trainer first, then sims
    assert len([p for p in run.state()["processes"] if p["name"].startswith("carla_client")]) == 4
    run.assert_nothing_left()
    assert_no_shared_memory_left(run.pids())
