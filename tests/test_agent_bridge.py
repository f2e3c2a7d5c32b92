"""CarlaBridgeEnv over the real bridge: the built-in world served by `python -m carla_client` under the
sim interpreter, the env in this (trainer) interpreter."""
import time
import warnings

import gymnasium
import numpy as np
import pytest

import agent  # noqa: F401  (registers CarlaBridge-v0)
from agent.env import CarlaBridgeEnv
from agent.reward import TERMS
from agent.vec import make_vec_env
from launch.procs import NotReady, free_tcp_endpoint, wait_bridge


def wait_ready(endpoint, proc, timeout=30.0):
    """Readiness through the protocol: ping until the server answers (or the process dies)."""
    try:
        wait_bridge(endpoint, time.monotonic() + timeout, proc)
    except NotReady as e:
        pytest.fail(f"{e}:\n{proc.log_tail()}")


@pytest.fixture
def sim(sim_process):
    """Starts a built-in world server; returns a function giving a fresh one's endpoint."""

    def start(*extra):
        endpoint = free_tcp_endpoint()
        proc = sim_process(["-m", "carla_client", "--world", "builtin", "--bind", endpoint, *extra])
        wait_ready(endpoint, proc)
        return endpoint, proc

    return start


def test_checkers_pass_over_the_bridge(sim):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    endpoint, _ = sim()
    with CarlaBridgeEnv(endpoint, max_episode_steps=200) as env:
        assert env.observation_space["camera"].shape == (64, 64, 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(env)
            sb3_check_env(env)


def test_gymnasium_make_steps_and_reports_reward_terms(sim):
    endpoint, _ = sim()
    env = gymnasium.make("CarlaBridge-v0", endpoint=endpoint, camera_size=(32, 48))
    try:
        obs, info = env.reset(seed=7)
        assert obs["camera"].shape == (32, 48, 3) and obs in env.observation_space
        for _ in range(30):
            obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.8], np.float32))
        assert {f"reward_{t}" for t in TERMS} <= set(info)
        assert reward == pytest.approx(sum(info[f"reward_{t}"] for t in TERMS))
        assert info["frame"] == 30 and info["sim_time"] == pytest.approx(1.5)
        assert info["speed"] > 1.0 and info["reward_progress"] > 0
        with pytest.raises(ValueError):
            env.step(np.array([np.nan, 0.0], np.float32))
        _, _, _, _, info = env.step(np.array([5.0, -5.0], np.float32))  # clipped, not rejected
        assert (info["steer"], info["brake"]) == (1.0, 1.0)
    finally:
        env.close()
        env.close()


def test_state_only_and_three_value_actions(sim, tmp_path):
    sensors = tmp_path / "sensors.json"
    sensors.write_text('[{"name": "collision", "type": "sensor.other.collision"}]')
    endpoint, _ = sim("--sensors", str(sensors))
    with CarlaBridgeEnv(endpoint, action_mode="3d") as env:
        assert set(env.observation_space.spaces) == {"vehicle_state"}
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.array([0.1, 0.6, 0.0], np.float32))
        assert info["throttle"] == pytest.approx(0.6)


def test_reconnects_after_a_sim_restart(sim, sim_process):
    endpoint, proc = sim()
    with CarlaBridgeEnv(endpoint, reconnect=True, reconnect_timeout=30.0, timeout=3.0) as env:
        env.reset(seed=0)
        env.step(np.array([0.0, 0.5], np.float32))
        proc.stop()
        restarted = sim_process(["-m", "carla_client", "--world", "builtin", "--bind", endpoint])
        wait_ready(endpoint, restarted)
        _, reward, terminated, truncated, info = env.step(np.array([0.0, 0.5], np.float32))
        assert info["bridge_reconnected"] and truncated and not terminated
        obs, _ = env.reset()
        obs, *_ = env.step(np.array([0.0, 0.5], np.float32))
        assert obs in env.observation_space


def test_vec_env_over_two_sims(sim):
    endpoints = [sim()[0], sim()[0]]
    venv = make_vec_env(endpoints, seed=0, vec="subproc", max_episode_steps=50)
    try:
        obs = venv.reset()
        assert obs["camera"].shape == (2, 64, 64, 3)
        for _ in range(60):  # crosses an episode end: the workers reset themselves
            obs, rewards, dones, infos = venv.step(np.tile([[0.0, 0.5]], (2, 1)).astype(np.float32))
        stats = venv.env_method("bridge_stats")
        assert len(stats) == 2 and all(s[0] > 0 for s in stats)
    finally:
        venv.close()
