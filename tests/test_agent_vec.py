"""BridgeVecEnv: SB3's VecEnv contract, failures of one sim, and PPO over it.

The first tests run on in-process worlds (milliseconds, no sim process) and hold BridgeVecEnv to
DummyVecEnv's behaviour step for step; the others drive real ``python -m carla_client`` processes under
the sim interpreter, kill or freeze one of them and check that the others keep stepping.
"""
import json
import os
import signal
import time

import numpy as np
import pytest
from stable_baselines3.common.monitor import Monitor

from agent.inprocess import InProcessClient
from agent.testing import FlakyClient, RingWorld
from agent.vec import BridgeVecEnv, make_vec_env
from bridge.errors import BridgeTimeoutError, PeerDisconnectedError, RemoteTimeoutError
from tests.test_agent_bridge import sim, wait_ready  # noqa: F401  (the `sim` fixture)

RING = "inprocess://ring"


def flaky_ring():
    return FlakyClient(InProcessClient(RingWorld(camera=(24, 32))))


def ring_vec(n=3, **kwargs):
    kwargs.setdefault("camera_size", (16, 16))
    kwargs.setdefault("client_factory", flaky_ring)
    return BridgeVecEnv([RING] * n, **kwargs)


def random_actions(rng, n):
    return np.stack([rng.uniform(-1, 1, n), rng.uniform(-0.2, 1, n)], axis=1).astype(np.float32)


def assert_same_obs(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def compare_with_dummy(bridge, dummy, steps, seed=0):
    """Steps both with the same actions; every output must match (episode wall times aside)."""
    rng = np.random.default_rng(seed)
    assert_same_obs(bridge.reset(), dummy.reset())
    ends = 0
    for _ in range(steps):
        actions = random_actions(rng, bridge.num_envs)
        obs_b, rew_b, done_b, infos_b = bridge.step(actions)
        obs_d, rew_d, done_d, infos_d = dummy.step(actions)
        assert_same_obs(obs_b, obs_d)
        np.testing.assert_array_equal(rew_b, rew_d)
        np.testing.assert_array_equal(done_b, done_d)
        for info_b, info_d, done in zip(infos_b, infos_d, done_b):
            assert info_b["TimeLimit.truncated"] == info_d["TimeLimit.truncated"]
            assert info_b["frame"] == info_d["frame"]
            if done:
                ends += 1
                assert_same_obs(info_b["terminal_observation"], info_d["terminal_observation"])
                assert (info_b["episode"]["r"], info_b["episode"]["l"]) == \
                    (info_d["episode"]["r"], info_d["episode"]["l"])
                assert info_b["episode_metrics"] == info_d["episode_metrics"]
            else:
                assert "terminal_observation" not in info_b and "episode" not in info_b
    return ends


def test_steps_exactly_like_dummy_vec_env_with_auto_resets():
    kwargs = dict(camera_size=(16, 16), max_episode_steps=15, client_factory=flaky_ring)
    with_bridge = BridgeVecEnv([RING] * 3, seed=11, **kwargs)
    with_dummy = make_vec_env([RING] * 3, seed=11, vec="dummy", **kwargs)
    try:
        assert with_bridge.observation_space == with_dummy.observation_space
        assert with_bridge.action_space == with_dummy.action_space
        ends = compare_with_dummy(with_bridge, with_dummy, 40)
        assert ends >= 6  # time limits (and crashes into the ring's wall) were crossed
        assert with_bridge.reset_infos[0]["frame"] == 0
    finally:
        with_bridge.close()
        with_dummy.close()


def test_vec_env_methods_and_close():
    venv = ring_vec(2, seed=3)
    try:
        assert venv.get_attr("endpoint") == [RING, RING]
        venv.set_attr("lap_target", 0.5, indices=[1])
        assert venv.get_attr("lap_target") == [1.0, 0.5]
        venv.reset()
        venv.step(np.zeros((2, 2), np.float32))
        stats = venv.env_method("bridge_stats")
        assert len(stats) == 2 and all(s[0] > 0 for s in stats)
        assert venv.env_is_wrapped(Monitor) == [True, True]
        assert venv.seed(7) == [7, 8]
        assert all(image is None for image in venv.get_images())  # render_mode None
    finally:
        venv.close()
    venv.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        venv.reset()


def test_a_bad_action_is_refused_before_any_sim_moves():
    venv = ring_vec(2, seed=0)
    try:
        venv.reset()
        _, _, _, infos = venv.step(np.zeros((2, 2), np.float32))
        assert [i["frame"] for i in infos] == [1, 1]
        with pytest.raises(ValueError, match="NaN"):
            venv.step(np.array([[0.0, 0.5], [np.nan, 0.5]], np.float32))
        _, _, _, infos = venv.step(np.zeros((2, 2), np.float32))
        assert [i["frame"] for i in infos] == [2, 2]  # nothing skipped, in either env
    finally:
        venv.close()


def test_sims_announcing_different_spaces_are_refused(tmp_path):
    sensors = tmp_path / "state.json"
    sensors.write_text(json.dumps([{"name": "collision", "type": "sensor.other.collision"}]))
    with pytest.raises(ValueError, match="different spaces"):
        BridgeVecEnv([RING, f"inprocess://builtin?sensors={sensors}"])


def test_without_reconnect_a_failure_raises_after_the_others_are_collected():
    venv = ring_vec(3, seed=0, reconnect=False)
    try:
        venv.reset()
        venv.envs[1].client.fail_next = PeerDisconnectedError("sim 1 died")
        with pytest.raises(PeerDisconnectedError, match="sim 1 died"):
            venv.step(np.zeros((3, 2), np.float32))
        # nothing is left in flight: the next step works for everyone
        _, _, _, infos = venv.step(np.zeros((3, 2), np.float32))
        assert [i["frame"] for i in infos] == [2, 1, 2]  # env 1 never ticked the failed step
    finally:
        venv.close()


def test_a_sim_error_that_keeps_the_session_ends_only_that_episode():
    venv = ring_vec(2, seed=0, reconnect=True)
    try:
        venv.reset()
        venv.step(np.zeros((2, 2), np.float32))
        client = venv.envs[0].client
        client.fail_next = RemoteTimeoutError("TimeoutError", "camera data for frame 2 was late")
        _, rewards, dones, infos = venv.step(np.zeros((2, 2), np.float32))
        assert dones.tolist() == [True, False] and rewards[0] == 0.0
        assert "late" in infos[0]["sim_error"] and infos[0]["TimeLimit.truncated"]
        assert "bridge_error" not in infos[0] and venv.envs[0].client is client  # no reconnect
        assert venv.reset_infos[0]["frame"] == 0  # reset at once, like any episode end
        _, _, _, infos = venv.step(np.zeros((2, 2), np.float32))
        assert [i["frame"] for i in infos] == [1, 3]
    finally:
        venv.close()


def test_a_reset_the_sim_could_not_finish_is_tried_again_as_the_single_env_does():
    late = RemoteTimeoutError("TimeoutError", "camera data for frame 0 was late")
    venv = ring_vec(2, seed=0, max_episode_steps=3)
    try:
        venv.envs[1].client.fail_resets = [late]
        venv.reset()  # the first reset of env 1 fails, the second answers
        assert [info["frame"] for info in venv.reset_infos] == [0, 0]
        venv.envs[1].client.fail_resets = [late] * 3  # RESET_ATTEMPTS in all, then the caller
        with pytest.raises(RemoteTimeoutError, match="late"):
            venv.reset()
        assert venv.envs[1].client.fail_resets == []
        venv.reset()
        venv.envs[0].client.fail_resets = [late, late]  # its auto-reset fails twice, then works
        for _ in range(2):
            venv.step(np.zeros((2, 2), np.float32))
        _, _, dones, infos = venv.step(np.zeros((2, 2), np.float32))
        assert dones.tolist() == [True, True] and "terminal_observation" in infos[0]
        assert venv.envs[0].client.fail_resets == [] and venv.reset_infos[0]["frame"] == 0
        _, _, _, infos = venv.step(np.zeros((2, 2), np.float32))
        assert [info["frame"] for info in infos] == [1, 1]

        venv.envs[1].client.fail_resets = [late] * 3  # RESET_ATTEMPTS: then the caller hears of it
        venv.step(np.zeros((2, 2), np.float32))  # step 2 of 3; the third ends both episodes
        with pytest.raises(RemoteTimeoutError, match="late"):
            venv.step(np.zeros((2, 2), np.float32))
    finally:
        venv.close()


def step_until(venv, predicate, timeout=30.0, actions=None):
    """Steps until ``predicate(infos, dones)`` holds; returns everything seen on the way."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = venv.step(np.zeros((venv.num_envs, 2), np.float32) if actions is None else actions)
        seen.append(result)
        if predicate(result[3], result[2]):
            return seen
    raise AssertionError(f"not reached within {timeout} s; last infos: {seen[-1][3] if seen else None}")


def test_a_failing_env_truncates_and_reconnects_while_the_others_step_on():
    venv = ring_vec(3, seed=0, reconnect=True, reconnect_timeout=10.0)
    try:
        venv.reset()
        for _ in range(3):
            venv.step(np.zeros((3, 2), np.float32))
        old_client = venv.envs[1].client
        old_client.fail_next = BridgeTimeoutError("sim 1 hangs")
        obs, rewards, dones, infos = venv.step(np.zeros((3, 2), np.float32))
        assert dones.tolist() == [False, True, False]
        failed = infos[1]
        assert "BridgeTimeoutError: sim 1 hangs" in failed["bridge_error"]
        assert failed["TimeLimit.truncated"] is True and rewards[1] == 0.0
        assert failed["episode"]["l"] == 4  # the interrupted episode is reported (as Monitor would)
        assert failed["episode_metrics"]["length"] == 3
        assert_same_obs(failed["terminal_observation"], {k: v[1] for k, v in obs.items()})
        assert [infos[i]["frame"] for i in (0, 2)] == [4, 4]

        seen = step_until(venv, lambda infos, dones: infos[1].get("bridge_reconnected"))
        *idle, (obs, rewards, dones, infos) = seen
        for _, idle_rewards, idle_dones, idle_infos in idle:
            assert idle_infos[1] == {"bridge_reconnecting": True}
            assert idle_rewards[1] == 0.0 and not idle_dones[1]
        assert [i["frame"] for i in (seen[-1][3][0], seen[-1][3][2])] == [4 + len(seen)] * 2
        assert dones[1] and infos[1]["TimeLimit.truncated"] and "episode" not in infos[1]
        assert venv.envs[1].client is not old_client  # a new session
        assert venv.reset_infos[1]["frame"] == 0
        _, _, dones, infos = venv.step(np.zeros((3, 2), np.float32))
        assert infos[1]["frame"] == 1 and not dones[1]
    finally:
        venv.close()


def test_a_sim_that_never_comes_back_makes_step_raise():
    state = {"calls": 0}

    def factory():
        state["calls"] += 1
        if state["calls"] > 2:
            raise PeerDisconnectedError("the sim stays dead")
        return flaky_ring()

    venv = ring_vec(2, seed=0, client_factory=factory, reconnect=True, reconnect_timeout=0.5)
    try:
        venv.reset()
        venv.envs[0].client.fail_next = PeerDisconnectedError("sim 0 died")
        _, _, dones, _ = venv.step(np.zeros((2, 2), np.float32))
        assert dones[0]
        with pytest.raises(PeerDisconnectedError, match="did not come back within 0.5 s"):
            step_until(venv, lambda infos, dones: False, timeout=10.0)
    finally:
        venv.close()


# ------------------------------------------------------------------ real sims over the bridge

def test_auto_uses_bridge_vec_env_for_many_sims_and_matches_dummy_vec_env(sim):
    endpoints = [sim()[0], sim()[0]]
    kwargs = dict(camera_size=(32, 32), max_episode_steps=12)
    venv = make_vec_env(endpoints, seed=4, **kwargs)
    assert isinstance(venv, BridgeVecEnv)
    try:
        obs = venv.reset()
        assert obs["camera"].shape == (2, 32, 32, 3)
        rng = np.random.default_rng(0)
        recorded = [venv.step(random_actions(rng, 2)) for _ in range(30)]
    finally:
        venv.close()
    # the same sims, the same seeds, one at a time: the same observations (lockstep, determinism)
    dummy = make_vec_env(endpoints, seed=4, vec="dummy", **kwargs)
    try:
        assert_same_obs(obs, dummy.reset())
        rng = np.random.default_rng(0)
        for obs_b, rew_b, done_b, infos_b in recorded:
            obs_d, rew_d, done_d, infos_d = dummy.step(random_actions(rng, 2))
            assert_same_obs(obs_b, obs_d)
            np.testing.assert_allclose(rew_b, rew_d)
            np.testing.assert_array_equal(done_b, done_d)
        assert sum(r[2].sum() for r in recorded) >= 4  # auto-resets happened in both
    finally:
        dummy.close()


def test_ppo_learns_over_bridge_vec_env_with_three_sims(sim):
    from agent.train import build_model

    endpoints = [sim()[0] for _ in range(3)]
    venv = BridgeVecEnv(endpoints, seed=0, camera_size=(32, 32), max_episode_steps=20)
    try:
        model = build_model({"seed": 0, "policy": {"cnn_dim": 16, "state_dim": 16},
                             "ppo": {"n_steps": 32, "batch_size": 48, "n_epochs": 1}}, venv)
        model.learn(192)
        assert model.num_timesteps == 192
        assert len(model.ep_info_buffer) >= 6  # Monitor-style episode infos reached SB3
        assert all(e["l"] <= 20 for e in model.ep_info_buffer)
    finally:
        venv.close()


def three_sims(sim, **kwargs):
    started = [sim() for _ in range(3)]
    venv = BridgeVecEnv([e for e, _ in started], seed=0, camera_size=(32, 32),
                        max_episode_steps=10_000, reconnect=True, **kwargs)
    return venv, started


def test_a_killed_sim_truncates_its_env_and_comes_back_while_the_others_step_on(sim, sim_process):
    venv, started = three_sims(sim, timeout=5.0, reconnect_timeout=60.0)
    try:
        venv.reset()
        for _ in range(5):
            venv.step(np.zeros((3, 2), np.float32))
        endpoint, proc = started[1]
        os.killpg(proc.pid, signal.SIGKILL)  # no goodbye: its TCP connection just drops
        killed_at = time.monotonic()
        seen = step_until(venv, lambda infos, dones: "bridge_error" in infos[1])
        assert time.monotonic() - killed_at < 5.0, "a dead sim is noticed by its connection"
        assert "PeerDisconnectedError" in seen[-1][3][1]["bridge_error"] and seen[-1][2][1]
        for _ in range(5):  # the others keep stepping while sim 1 is down
            _, _, _, infos = venv.step(np.zeros((3, 2), np.float32))
            assert infos[1] == {"bridge_reconnecting": True}
            assert "frame" in infos[0] and "frame" in infos[2]
        frame_before = infos[0]["frame"]
        restarted = sim_process(["-m", "carla_client", "--world", "builtin", "--bind", endpoint])
        wait_ready(endpoint, restarted)
        seen = step_until(venv, lambda infos, dones: infos[1].get("bridge_reconnected"), timeout=60)
        assert seen[-1][2][1] and seen[-1][3][0]["frame"] == frame_before + len(seen)
        _, _, _, infos = venv.step(np.zeros((3, 2), np.float32))
        assert infos[1]["frame"] == 1
    finally:
        venv.close()


def test_a_sim_that_moved_is_found_through_the_endpoints_file(sim, tmp_path):
    """cluster=ray cluster.bind=node: Ray restarted a sim on another node; the launcher rewrote the
    endpoints file and the env reconnects to the sim's new address."""
    (first, dying), (other, _) = sim(), sim()
    moves = tmp_path / "endpoints.json"
    moves.write_text(json.dumps({"endpoints": {first: first, other: other}}))
    venv = BridgeVecEnv([first, other], seed=0, camera_size=(16, 16), max_episode_steps=10_000,
                        reconnect=True, timeout=5.0, reconnect_timeout=60.0, endpoints_file=str(moves))
    try:
        venv.reset()
        venv.step(np.zeros((2, 2), np.float32))
        os.killpg(dying.pid, signal.SIGKILL)
        step_until(venv, lambda infos, dones: "bridge_error" in infos[0])
        moved, _ = sim()  # the same world on another address
        moves.write_text("{not json")  # a half-written file is ignored, the old address is kept
        venv.step(np.zeros((2, 2), np.float32))
        moves.write_text(json.dumps({"endpoints": {first: moved, other: other}}))
        step_until(venv, lambda infos, dones: infos[0].get("bridge_reconnected"), timeout=60)
        assert venv.envs[0].endpoint == moved and venv.envs[0].first_endpoint == first
        assert venv.envs[1].endpoint == other
        _, _, _, infos = venv.step(np.zeros((2, 2), np.float32))
        assert infos[0]["frame"] == 1
    finally:
        venv.close()


def test_a_frozen_sim_times_out_alone_and_is_back_once_it_thaws(sim):
    venv, started = three_sims(sim, timeout=1.0, reconnect_timeout=60.0)
    frozen = started[2][1]
    try:
        venv.reset()
        venv.step(np.zeros((3, 2), np.float32))
        os.killpg(frozen.pid, signal.SIGSTOP)  # alive, connection open, silent: only a timeout tells
        seen = step_until(venv, lambda infos, dones: "bridge_error" in infos[2], timeout=20)
        assert "BridgeTimeoutError" in seen[-1][3][2]["bridge_error"]
        assert all("frame" in s[3][0] and "frame" in s[3][1] for s in seen)
        os.killpg(frozen.pid, signal.SIGCONT)
        step_until(venv, lambda infos, dones: infos[2].get("bridge_reconnected"), timeout=60)
        _, _, _, infos = venv.step(np.zeros((3, 2), np.float32))
        assert infos[2]["frame"] == 1
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
        venv.close()
