"""cluster=ray on one machine: a Ray cluster of a head and two worker nodes (ray.cluster_utils.Cluster),
each advertising its own ``carla_sim`` resources; sims placed, spread, restarted and stopped.

The placement test and the PPO run bind each sim on its node's address (``cluster.bind=node``: this
machine's non-loopback IP where it has one) with CurveZMQ keys; the Ctrl-C run stays on loopback."""
import json
import os
import shutil
import signal
import time

import pytest

from bridge.client import BridgeClient
from bridge.errors import BridgeError, PeerDisconnectedError
from bridge.keys import CurveError
from bridge.transport import LOOPBACK_HOSTS, parse_tcp_endpoint
from tests.both.test_curve import make_key_dirs
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


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """(the trainer's and sims' key directory, a stranger's with the right server.key)."""
    return make_key_dirs(tmp_path_factory.mktemp("curve"))


def answers(endpoint, curve=None):
    try:
        with BridgeClient(endpoint, timeout=2.0, hello_timeout=2.0, heartbeat_seconds=0,
                          curve=curve) as client:
            return client.ping(timeout=2.0)["protocol"] is not None
    except BridgeError:
        return False


def node_ip():
    """The address Ray's nodes report on this machine (its non-loopback IP, where it has one)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def assert_no_service_without_the_keys(endpoint, stranger):
    """A trainer without keys, or with a key the sims do not list, is refused at the handshake."""
    with BridgeClient(endpoint, timeout=10.0, heartbeat_seconds=0) as unkeyed:
        with pytest.raises((CurveError, PeerDisconnectedError), match="requires CurveZMQ"):
            unkeyed.ping()
    with BridgeClient(endpoint, timeout=10.0, heartbeat_seconds=0, curve=stranger) as wrong:
        with pytest.raises(CurveError, match="refused our CURVE key"):
            wrong.hello()


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
def test_sims_bind_their_nodes_address_with_curve_spread_restarted_by_ray_and_stopped(
        cluster, sim_python, tmp_path, keys):
    from launch.ray_placement import RayPlacement

    good, stranger = keys
    base = _free_port_block(4)
    config = load_config(None, ["cluster=ray", f"cluster.address={cluster.address}",
                                f"interpreters.sim_python={sim_python}", "clients.count=4",
                                f"clients.base_port={base}", "cluster.max_restarts=2",
                                "cluster.bind=node", f"curve={good}"])
    recorded = []
    supervision = Supervision(None, lambda: False, lambda: False, lambda: False, tmp_path,
                              lambda name, pid, argv: recorded.append((name, pid, argv)))
    placement = RayPlacement(config, sim_python, supervision)
    try:
        placement.start()
        endpoints = placement.endpoints()
        assert endpoints == [f"tcp://{node_ip()}:{base + i}" for i in range(4)]
        on_network = parse_tcp_endpoint(endpoints[0])[0] not in LOOPBACK_HOSTS
        for _, _, argv in recorded:
            assert argv[argv.index("--curve") + 1] == good
            assert ("--allow-remote" in argv) == on_network
        assert all(answers(e, curve=good) for e in endpoints)
        assert_no_service_without_the_keys(endpoints[3], stranger)
        moves = json.loads((tmp_path / "endpoints.json").read_text())["endpoints"]
        assert moves == {e: e for e in endpoints}
        nodes = {ray.get(actor.info.remote())["node_id"] for actor in placement.actors}
        assert len(nodes) >= 2, "SPREAD put every sim on one node"
        assert [r[0] for r in recorded] == [f"carla_client-{i}" for i in range(4)]

        # a carla_client that dies on its own: its actor exits, Ray starts a new one, same endpoint
        first = placement.pids[0]
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: placement.pids[0] != first and answers(endpoints[0], curve=good), 90,
                   "carla_client-0 to come back", placement.watch)
        assert recorded[-1][0] == "carla_client-0"

        # a node that dies: its sims come back on the other nodes
        where = [ray.get(a.info.remote())["node_id"] for a in placement.actors]
        node = next(w for w in cluster.workers if w.node_id in where)
        on_node = [i for i, node_id in enumerate(where) if node_id == node.node_id]
        before = list(placement.pids)
        cluster.remove_node(node)
        wait_until(lambda: all(placement.pids[i] != before[i] for i in on_node)
                   and all(answers(e, curve=good) for e in endpoints), 120,
                   f"the sims {on_node} of the removed node to come back", placement.watch)
    finally:
        pids = [r[1] for r in recorded]
        placement.stop()
        if len(cluster.list_all_nodes()) < 3:  # give the next test its third node back
            cluster.workers[0] = cluster.add_node(num_cpus=1, resources={"carla_sim": 2})
            cluster.wait_for_nodes()
    wait_until(lambda: not _survivors(set(pids)), 30, "every carla_client to exit")


@pytest.mark.timeout(120)
def test_a_node_without_the_sims_keys_fails_the_launch_at_once(cluster, sim_python, tmp_path, keys):
    from launch.procs import LaunchError
    from launch.ray_placement import RayPlacement

    trainer_only = tmp_path / "trainer-keys"  # what the trainer's host keeps: no server secret
    trainer_only.mkdir()
    for name in ("server.key", "client.key", "client.key_secret"):
        shutil.copy(os.path.join(keys[0], name), trainer_only / name)
    config = load_config(None, ["cluster=ray", f"cluster.address={cluster.address}",
                                f"interpreters.sim_python={sim_python}", "clients.count=1",
                                f"clients.base_port={_free_port_block(1)}", "cluster.bind=node",
                                f"curve={trainer_only}"])
    supervision = Supervision(None, lambda: False, lambda: False, lambda: False, tmp_path,
                              lambda *args: None)
    placement = RayPlacement(config, sim_python, supervision)
    placement.check_free()  # the trainer's side of the keys is complete
    started = time.monotonic()
    try:
        with pytest.raises(LaunchError, match=r"cannot serve with CURVE: missing CURVE key file "
                                              r".*server.key_secret.* at the same path"):
            placement.start()
        assert time.monotonic() - started < 60
    finally:
        placement.stop()


@pytest.mark.timeout(400)
def test_ppo_trains_over_four_sims_on_the_cluster_and_survives_a_killed_sim(cluster, launch_run,
                                                                             keys):
    # Ticks of at least 25 ms keep training going for > 25 s after the kill, so the restarted sim is
    # back before the run ends even on a quiet machine (2048 fast steps finished before it was).
    # The sims listen on the nodes' address with CURVE; the trainer steps them with its keys.
    run = launch_run(["cluster=ray", f"cluster.address={cluster.address}", "tensorboard.enabled=false",
                      "cluster.bind=node", f"curve={keys[0]}",
                      "clients.extra_args=[--tick-latency-ms, '25']"],
                     ["total_timesteps=4096", *TINY], clients=4)
    run.wait_for(lambda: list(run.run_dir.glob("events.out.tfevents.*")), 240, "training to start")
    assert "ray: 4 sims on" in run.text() and "with CURVE" in run.text()
    endpoints = run.state()["endpoints"]
    assert endpoints == [f"tcp://{node_ip()}:{run.base_port + i}" for i in range(4)]
    trainer_argv = next(p["argv"] for p in run.state()["processes"] if p["name"] == "trainer")
    assert f"endpoints={','.join(endpoints)}" in trainer_argv
    assert f"env.curve={keys[0]}" in trainer_argv
    assert f"env.endpoints_file={run.run_dir / 'logs' / 'endpoints.json'}" in trainer_argv
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
