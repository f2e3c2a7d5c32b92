"""Env snapshots (``env.unwrapped.snapshot()``/``.restore()``) and agent.branch's group rollouts, in
process and through the bridge to a sim under the sim interpreter (Python 3.6 here)."""
import json
import time

import gymnasium
import numpy as np
import pytest

import agent  # noqa: F401  (registers CarlaBridge-v0)
from agent.branch import branch, main as branch_main
from agent.env import CarlaBridgeEnv
from bridge.errors import SnapshotError, SnapshotUnsupportedError
from launch.procs import free_tcp_endpoint, wait_bridge

ENV = dict(camera_size=(32, 32), max_episode_steps=1000, reconnect=False,
           reset_options={"random_start": True})


@pytest.fixture
def served_builtin(sim_process):
    """A built-in world with NPCs served by ``python -m carla_client`` under the sim interpreter."""
    endpoint = free_tcp_endpoint()
    proc = sim_process(["-m", "carla_client", "--world", "builtin", "--bind", endpoint, "--npc", "4"])
    wait_bridge(endpoint, time.monotonic() + 60.0, proc)
    return endpoint


def run(env, actions):
    """Steps ``actions``; returns every (obs bytes, reward, terminated, truncated, info) as bytes."""
    out = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append(([(k, v.tobytes()) for k, v in sorted(obs.items())], reward, terminated,
                    truncated, json.dumps(info, sort_keys=True, default=float)))
    return out


def drive(seed, count):
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-0.5, 0.5, count), rng.uniform(0.3, 1.0, count)], 1).astype(np.float32)


def check_env_restore(env):
    env.reset(seed=4)
    run(env, drive(0, 20))
    snapshot = env.unwrapped.snapshot()
    actions = drive(1, 80)
    first = run(env, actions)
    obs, info = env.unwrapped.restore(snapshot)
    assert info["restored"] and info["frame"] == 20
    second = run(env, actions)
    assert second == first
    env.unwrapped.restore(snapshot)
    assert run(env, drive(2, 80)) != first


def test_env_restore_gives_identical_observations_rewards_and_infos_in_process():
    with CarlaBridgeEnv("inprocess://builtin", **ENV) as env:
        check_env_restore(env)


def test_env_restore_across_interpreters(served_builtin):
    env = gymnasium.make("CarlaBridge-v0", endpoint=served_builtin, **ENV)
    try:
        check_env_restore(env)
    finally:
        env.close()


def test_env_restore_with_a_camera_on_the_shared_memory_path(sim_process, tmp_path):
    """A 128x128 BGRA camera (64 KiB) travels through /dev/shm slots; a restore reply does not (it
    travels as a frame) and must not disturb the slots' alternation."""
    sensors = tmp_path / "sensors.json"
    sensors.write_text(json.dumps([{"name": "camera", "type": "sensor.camera.rgb", "view": "chase",
                                    "width": 128, "height": 128}]))
    endpoint = free_tcp_endpoint()
    proc = sim_process(["-m", "carla_client", "--world", "builtin", "--bind", endpoint,
                        "--sensors", str(sensors)])
    wait_bridge(endpoint, time.monotonic() + 60.0, proc)
    with CarlaBridgeEnv(endpoint, **dict(ENV, camera_size=None)) as env:
        assert env.server_info.shm is True
        check_env_restore(env)


def test_env_snapshot_refused_by_a_world_that_cannot_and_before_reset():
    with CarlaBridgeEnv("inprocess://ring", camera_size=None) as env:
        with pytest.raises(RuntimeError, match="reset"):
            env.snapshot()
        env.reset(seed=0)
        with pytest.raises(SnapshotUnsupportedError):
            env.snapshot()


def test_branch_identical_action_sequences_give_identical_trajectories(served_builtin):
    with CarlaBridgeEnv(served_builtin, **ENV) as env:
        env.reset(seed=8)
        run(env, drive(3, 10))
        same = [drive(5, 40)] * 3
        result = branch(env, same, rollouts=3, steps=40, keep_observations=True)
        first = result.rollouts[0]
        assert first.steps == 40 and len(first.observations) == 41
        for other in result.rollouts[1:]:
            assert other.rewards.tobytes() == first.rewards.tobytes()
            assert np.array_equal(other.actions, first.actions)
            for a, b in zip(first.observations, other.observations):
                assert all(a[k].tobytes() == b[k].tobytes() for k in a)
        assert len(set(result.returns.tolist())) == 1

        different = [drive(5, 40), drive(6, 40), drive(7, 40)]
        diverged = branch(env, different, rollouts=3, steps=40, snapshot=result.snapshot,
                          keep_observations=True)
        assert diverged.rollouts[0].rewards.tobytes() == first.rewards.tobytes()  # same sequence
        assert len(set(diverged.returns.tolist())) == 3
        finals = [r.observations[-1]["camera"].tobytes() for r in diverged.rollouts]
        assert len(set(finals)) == 3
        # the env is back at the snapshot: the branch point's next step is the same as before
        assert run(env, drive(5, 40)[:1])[0][1] == first.rewards[0]


def test_branch_with_a_callable_policy_seeds_each_rollout_reproducibly():
    with CarlaBridgeEnv("inprocess://builtin", **ENV) as env:
        env.reset(seed=1)
        sample = lambda obs: env.action_space.sample()  # noqa: E731
        a = branch(env, sample, rollouts=3, steps=15, seed=100)
        b = branch(env, sample, rollouts=3, steps=15, seed=100, snapshot=a.snapshot)
        assert np.array_equal(a.returns, b.returns)
        assert len(set(a.returns.tolist())) == 3  # different seeds, different actions


def test_a_snapshot_dies_with_its_session():
    with CarlaBridgeEnv("inprocess://builtin", **ENV) as env:
        env.reset(seed=1)
        snapshot = env.snapshot()
        env.client.hello()  # a new session (what a reconnect does)
        env.reset(seed=1)
        with pytest.raises(SnapshotError, match="unknown snapshot token"):
            env.restore(snapshot)


def test_branch_command_line(served_builtin, tmp_path, capsys):
    out = tmp_path / "branch.json"
    assert branch_main(["--random", "--rollouts", "3", "--steps", "12", "--warmup", "5",
                        "--endpoint", served_builtin, "--json", str(out),
                        "env.camera_size=[32,32]"]) == 0
    result = json.loads(out.read_text())
    assert len(result["returns"]) == 3 and result["steps"] == [12, 12, 12]
    assert "mean return" in capsys.readouterr().out
