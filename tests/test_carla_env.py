"""CarlaBridgeEnv over the real bridge with CarlaWorld on the hardened fake CARLA server: what a
trainer sees when CARLA is late or loses the ego (issue 8). Trainer side only (gymnasium)."""
import types

import numpy as np
import pytest

from agent.callbacks import DrivingMetricsCallback
from agent.env import RESET_ATTEMPTS, CarlaBridgeEnv
from bridge.errors import RemoteTimeoutError
from tests import fake_carla
from tests.carla.support import carla_world_served, require_carla

STRAIGHT = np.array([0.0, 0.3], dtype=np.float32)


@pytest.fixture
def carla():
    return require_carla()


@pytest.fixture
def served(carla, tcp_endpoint):
    server = fake_carla.FakeServer(carla)
    with carla_world_served(carla, tcp_endpoint, server, timeout=0.5) as (_, bridge):
        yield server, bridge


def test_a_sim_side_timeout_truncates_the_episode_and_reset_goes_on(served):
    server, bridge = served
    with CarlaBridgeEnv(bridge.endpoint, timeout=0.2, use_shm=False) as env:
        assert env.client.timeout > env.server_info.step_budget == 0.5
        env.reset(seed=0)
        env.step(STRAIGHT)
        session = env.client.info.session
        server.drop_frames[server.frame + 1] = {"sensor.camera.rgb"}
        obs, reward, terminated, truncated, info = env.step(STRAIGHT)
        assert truncated and not terminated and reward == 0.0
        assert "'camera'" in info["sim_error"] and str(server.frame) in info["sim_error"]
        assert "episode_metrics" in info and obs in env.observation_space
        with pytest.raises(RuntimeError, match="reset"):
            env.step(STRAIGHT)
        env.reset()
        _, _, terminated, truncated, info = env.step(STRAIGHT)
        assert not (terminated or truncated) and "sim_error" not in info
        assert env.client.info.session == session, "no reconnect: the session survived"


def test_a_reset_the_sim_could_not_finish_is_tried_again(served):
    server, bridge = served
    with CarlaBridgeEnv(bridge.endpoint, use_shm=False) as env:
        env.reset(seed=0)
        resets = len(server.calls_named("set_transform"))
        server.drop_frames[server.frame + 1] = {"sensor.camera.rgb"}  # the reset's own tick
        obs, info = env.reset()
        assert obs in env.observation_space and info["frame"] == 0
        assert len(server.calls_named("set_transform")) == resets + 2, "one retry"
        server.drop.add("sensor.camera.rgb")  # for good: the env gives up after RESET_ATTEMPTS
        with pytest.raises(RemoteTimeoutError, match="'camera'"):
            env.reset()
        assert len(server.calls_named("set_transform")) == resets + 2 + RESET_ATTEMPTS


def test_a_lost_ego_truncates_the_episode_and_reset_rebuilds_it(served):
    server, bridge = served
    with CarlaBridgeEnv(bridge.endpoint, use_shm=False, reconnect=True) as env:
        env.reset(seed=0)
        server.destroy_from_outside(server.vehicles()[0].id)
        _, _, terminated, truncated, info = env.step(STRAIGHT)
        assert truncated and not terminated and "destroyed" in info["sim_error"]
        assert "bridge_reconnected" not in info
        env.reset()
        _, _, terminated, truncated, _ = env.step(STRAIGHT)
        assert not (terminated or truncated)
        assert len(server.vehicles()) == 1


def test_late_events_are_counted_per_step_per_episode_and_for_tensorboard(served):
    server, bridge = served
    server.lags = {"sensor.other.lane_invasion": (1, 1)}
    with CarlaBridgeEnv(bridge.endpoint, use_shm=False) as env:
        env.reset(seed=0)
        frame = server.frame + 1
        server.events[frame] = [("sensor.other.lane_invasion", fake_carla.lane_invasion(
            server.carla, frame, server.carla.LaneMarkingType.Broken))]
        _, _, _, _, first = env.step(STRAIGHT)
        _, _, _, _, second = env.step(STRAIGHT)
        assert (first["late_events"], first["lane_invasions"]) == (0, 0)
        assert (second["late_events"], second["lane_invasions"]) == (1, 1)
        assert env._metrics(0.0, False)["late_events"] == 1

    recorded = {}

    class Logger(object):
        def record(self, key, value):
            recorded[key] = value

        def record_mean(self, key, value):
            pass

    callback = DrivingMetricsCallback()
    callback.model = types.SimpleNamespace(logger=Logger())  # the callback logs to model.logger
    callback.locals = {"infos": [first]}
    callback.on_rollout_start()
    callback._on_step()
    callback.on_rollout_end()
    assert recorded == {}, "no sim/ tag while nothing was late (the built-in world never is)"
    callback.locals = {"infos": [second, {"sim_error": "late camera"}]}
    callback.on_rollout_start()
    callback._on_step()
    callback.on_rollout_end()
    assert recorded == {"sim/late_events": 1.0, "sim/sim_errors": 1.0}
