"""CarlaBridgeEnv's logic on an in-process test world (no sim process): spaces, actions, reward, ends."""
import math
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest

import agent  # noqa: F401  (registers CarlaBridge-v0)
from agent.config import apply_overrides
from agent.env import CarlaBridgeEnv
from agent.inprocess import InProcessClient
from agent.reward import TERMS, RewardConfig, compute_reward
from agent.testing import FlakyClient, RingWorld
from bridge.errors import BridgeTimeoutError, PeerDisconnectedError, SpecError
from bridge.spec import FieldSpec


def ring_env(camera=(48, 80), flaky=False, **kwargs):
    def factory():
        client = InProcessClient(RingWorld(camera=camera))
        return FlakyClient(client) if flaky else client

    return CarlaBridgeEnv("inprocess://ring", client_factory=factory, **kwargs)


@pytest.fixture
def env():
    with ring_env() as e:
        yield e


def test_spaces_from_spec(env):
    assert env.observation_space["camera"].shape == (64, 64, 3)  # resized from the sim's 48x80
    assert env.observation_space["camera"].dtype == np.uint8
    assert env.observation_space["vehicle_state"].dtype == np.float32
    assert env.action_space.shape == (2,)
    obs, info = env.reset(seed=3)
    assert obs in env.observation_space
    assert info["frame"] == 0


def test_state_only_when_no_camera():
    with ring_env(camera=None) as e:
        assert set(e.observation_space.spaces) == {"vehicle_state"}


def test_camera_is_rgb_from_bgra():
    with ring_env(camera_size=None) as e:
        obs, _ = e.reset(seed=0)
        image = obs["camera"]
        assert image.shape == (48, 80, 3)
        # RingWorld writes offset into the BGRA red channel (index 2): it must land in RGB index 0
        assert image[0, 0, 1] == 100 and image[0, 0, 2] == 0 and image[0, 0, 0] > 0


def test_gymnasium_and_sb3_checkers(env):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no spec to test render modes" and the like
        check_env(env)
        sb3_check_env(env)


@pytest.mark.parametrize("bad", [[math.nan, 0.0], [0.0, math.inf], [-math.inf, 0.5]])
def test_nan_and_inf_actions_raise(env, bad):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN or infinity"):
        env.step(np.array(bad, dtype=np.float32))


def test_wrong_action_shape_raises(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))


def test_out_of_range_actions_are_clipped(env):
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([3.0, -7.0]))
    assert (info["steer"], info["throttle"], info["brake"]) == (1.0, 0.0, 1.0)
    _, _, _, _, info = env.step(np.array([-1.5, 2.0]))
    assert (info["steer"], info["throttle"], info["brake"]) == (-1.0, 1.0, 0.0)


def test_out_of_range_can_raise():
    with ring_env(out_of_range="raise") as e:
        e.reset(seed=0)
        with pytest.raises(ValueError, match="outside"):
            e.step(np.array([0.0, 1.5]))


def test_three_value_action_mode():
    with ring_env(action_mode="3d") as e:
        assert e.action_space.shape == (3,)
        assert list(e.action_space.low) == [-1, 0, 0]
        e.reset(seed=0)
        _, _, _, _, info = e.step(np.array([0.25, 0.5, 0.125]))
        assert (info["steer"], info["throttle"], info["brake"]) == (0.25, 0.5, 0.125)


class AnnouncingClient(InProcessClient):
    """Announces ``action`` instead of the ring's control fields; records the controls sent."""

    def __init__(self, action):
        super().__init__(RingWorld())
        self.action, self.sent = action, []

    def hello(self):
        info = super().hello()
        return info._replace(spec=info.spec._replace(action=self.action))

    def step(self, action):
        self.sent.append(action)
        ring = {"hand_brake": False, "reverse": False, "steer": action["steer"],
                "throttle": action["throttle"], "brake": action["brake"]}
        return super().step(ring)


NARROW = (FieldSpec("steer", "float32", (), -0.5, 0.5), FieldSpec("throttle", "float32", (), 0.0, 0.8),
          FieldSpec("brake", "float32", (), 0.0, 1.0), FieldSpec("gear", "int32", (), 1, 5))


@pytest.mark.parametrize("mode, low, high", [("2d", [-0.5, -1.0], [0.5, 0.8]),
                                             ("3d", [-0.5, 0.0, 0.0], [0.5, 0.8, 1.0])])
def test_action_space_is_built_from_the_announced_spec(mode, low, high):
    client = AnnouncingClient(NARROW)
    with CarlaBridgeEnv("inprocess://ring", client_factory=lambda: client, action_mode=mode) as e:
        assert e.action_space.low.tolist() == low and e.action_space.high.tolist() == pytest.approx(high)
        e.reset(seed=0)
        e.step(np.ones(len(low)))  # beyond the announced steer and throttle: clipped to them
    # every announced field, in the announced order; no field the sim did not announce
    assert list(client.sent[0]) == ["steer", "throttle", "brake", "gear"]
    assert client.sent[0]["steer"] == 0.5 and client.sent[0]["throttle"] == pytest.approx(0.8)
    assert client.sent[0]["gear"] == 1  # neutral 0 moved into the announced bounds


@pytest.mark.parametrize("action, match", [
    (NARROW[1:], "'steer'"),
    ((FieldSpec("steer", "float32", (), None, None),) + NARROW[1:], "bounded scalar 'steer'"),
    (NARROW + (FieldSpec("lights", "bool", (4,), 0, 1),), "'lights' has shape"),
])
def test_an_action_spec_the_env_cannot_drive_is_a_spec_error(action, match):
    client = AnnouncingClient(action)
    with pytest.raises(SpecError, match=match):
        CarlaBridgeEnv("inprocess://ring", client_factory=lambda: client)
    assert client.backend.stopped  # the connection was closed, not leaked


def test_importing_the_trainer_never_imports_the_sim_package():
    """The schema lives in bridge/: the env, the vec envs and the trainer load no carla_client module."""
    probe = ("import sys, agent, agent.env, agent.vec, agent.train, launch.config, launch.overrides\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'carla_client'"
             " or m == 'agent.inprocess'))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_reward_terms_in_info_sum_to_reward(env):
    env.reset(seed=0)
    for _ in range(20):
        _, reward, _, _, info = env.step(np.array([0.0, 1.0]))
    terms = [info[f"reward_{t}"] for t in TERMS]
    assert reward == pytest.approx(sum(terms))
    assert info["reward_progress"] > 0
    assert {"frame", "sim_time"} <= set(info)
    assert info["frame"] == 20 and info["sim_time"] == pytest.approx(1.0)


def test_reward_weights_are_configurable():
    with ring_env(reward={"progress": 0.0, "speed": 0.0, "centre": 0.0, "heading": 0.0}) as e:
        e.reset(seed=0)
        _, reward, _, _, _ = e.step(np.array([0.0, 1.0]))
        assert reward == 0.0
    with pytest.raises(ValueError, match="unknown reward"):
        RewardConfig.from_dict({"progres": 1.0})


def test_compute_reward_terms():
    config = RewardConfig(progress=2.0, speed=1.0, target_speed=10.0, centre=1.0,
                          lane_half_width=2.0, heading=0.0, collision=5.0, lane_invasion=1.0)
    before = {"route_distance": 10.0}
    after = {"route_distance": 10.5, "speed": 5.0, "lateral_offset": 1.0, "heading_error": 0.0,
             "off_road": False}
    events = [{"type": "collision"}, {"type": "lane_invasion"}, {"type": "lane_invasion"}]
    total, terms = compute_reward(before, after, events, config)
    assert terms["progress"] == pytest.approx(1.0)
    assert terms["speed"] == pytest.approx(0.5)  # heading error 0: all of the speed is along the lane
    assert terms["centre"] == pytest.approx(-0.25)
    assert terms["collision"] == -5.0 and terms["lane_invasion"] == -2.0
    assert total == pytest.approx(sum(terms.values()))


def test_speed_target_behind_a_slower_car_and_the_overspeed_penalty():
    config = RewardConfig(progress=0.0, speed=1.0, target_speed=10.0, centre=0.0, heading=0.0,
                          follow_headway=1.5, follow_gap=4.0, overspeed=1.0)
    before = {"route_distance": 0.0}

    def speed_term(speed, gap):
        after = {"route_distance": 0.0, "speed": speed, "lateral_offset": 0.0, "heading_error": 0.0,
                 "off_road": False, "lead_distance": gap}
        return compute_reward(before, after, [], config)[1]["speed"]

    assert speed_term(10.0, 50.0) == pytest.approx(1.0)  # free road: the target speed
    assert speed_term(6.0, 13.0) == pytest.approx(1.0)  # 9 m beyond the gap at 1.5 s: 6 m/s is right
    assert speed_term(10.0, 13.0) == pytest.approx(1.0 - 0.4 - 0.4)  # too fast there, and overspeed
    assert speed_term(0.0, 3.0) == pytest.approx(1.0)  # stopped right behind: correct
    assert speed_term(12.0, 50.0) == pytest.approx(1.0 - 0.2 - 0.2)
    lap_only = RewardConfig(progress=0.0, centre=0.0, heading=0.0)  # the defaults: no following term
    after = {"route_distance": 0.0, "speed": 10.0, "lateral_offset": 0.0, "heading_error": 0.0,
             "off_road": False, "lead_distance": 5.0}
    assert compute_reward(before, after, [], lap_only)[1]["speed"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="overspeed"):
        RewardConfig.from_dict({"overspeed": -1})


def test_lead_vehicle_features_come_from_the_sims_measurements():
    endpoint = "inprocess://builtin?npc=2&sensors=" + str(
        Path(__file__).resolve().parent.parent / "launch" / "configs" / "sensors_events.json")
    with CarlaBridgeEnv(endpoint, camera=None, lead_vehicle=True) as e:
        assert e.observation_space["vehicle_state"].shape == (13,)
        obs, _ = e.reset(seed=0)
        state = obs["vehicle_state"]
        obs, _, _, _, info = e.step(np.array([0.0, 0.5]))
        gap = info["lead_distance"]
        assert 0.0 <= gap <= 50.0
        assert obs["vehicle_state"][10] == pytest.approx(gap / 50.0, abs=1e-6)
        assert state.shape == (13,)
    with CarlaBridgeEnv(endpoint, camera=None) as e:
        assert e.observation_space["vehicle_state"].shape == (10,)  # the lap-only policy's state
    older = RingWorld()
    spec = older.spec()
    older.spec = lambda: spec._replace(measurements=tuple(  # a sim from before the lead fields
        f for f in spec.measurements if not f.name.startswith("lead_")))
    with pytest.raises(SpecError, match="lead_vehicle=True"):
        CarlaBridgeEnv("inprocess://ring", lead_vehicle=True,
                       client_factory=lambda: InProcessClient(older))


def test_collision_terminates_with_episode_metrics(env):
    env.reset(seed=0)
    terminated = False
    for _ in range(400):  # full right lock off the ring into the "wall"
        _, _, terminated, truncated, info = env.step(np.array([1.0, 1.0]))
        if terminated or truncated:
            break
    assert terminated
    assert info["collisions"] >= 1 or info["off_road"]
    metrics = info["episode_metrics"]
    assert metrics["length"] == info["frame"]
    assert not metrics["lap_completed"]


def test_truncates_at_max_steps():
    with ring_env(max_episode_steps=5) as e:
        e.reset(seed=0)
        results = [e.step(np.array([0.0, 0.0]))[2:4] for _ in range(5)]
        assert results[-1] == (False, True)
        assert all(r == (False, False) for r in results[:-1])


def test_reconnect_ends_episode_as_truncated():
    with ring_env(flaky=True, reconnect=True, reconnect_timeout=5) as e:
        e.reset(seed=0)
        first = e.client
        e.client.fail_next = PeerDisconnectedError("sim died")
        obs, reward, terminated, truncated, info = e.step(np.array([0.0, 0.5]))
        assert info["bridge_reconnected"] and truncated and not terminated and reward == 0.0
        assert obs in e.observation_space
        assert e.client is not first
        obs, _ = e.reset()
        e.step(np.array([0.0, 0.5]))


def test_without_reconnect_errors_propagate():
    with ring_env(flaky=True) as e:
        e.reset(seed=0)
        e.client.fail_next = BridgeTimeoutError("no reply")
        with pytest.raises(BridgeTimeoutError):
            e.step(np.array([0.0, 0.5]))


def test_close_is_idempotent_and_context_manager():
    e = ring_env()
    with e:
        e.reset(seed=0)
    e.close()
    e.close()
    with pytest.raises(RuntimeError):
        e.reset()


def test_gymnasium_make_registered():
    e = gymnasium.make("CarlaBridge-v0", endpoint="inprocess://ring", max_episode_steps=50)
    try:
        obs, _ = e.reset(seed=1)
        assert obs in e.observation_space
    finally:
        e.close()
        e.close()


def test_config_overrides():
    base = {"endpoints": ["a"], "total_timesteps": 10, "ppo": {"learning_rate": 3e-4}}
    out = apply_overrides(base, ["ppo.learning_rate=1e-4", "total_timesteps=5000",
                                 "endpoints=tcp://h:1,tcp://h:2", "reward.speed=0.5"])
    assert out["ppo"]["learning_rate"] == 1e-4 and out["total_timesteps"] == 5000
    assert out["endpoints"] == ["tcp://h:1", "tcp://h:2"] and out["reward"] == {"speed": 0.5}
    assert base["total_timesteps"] == 10
    with pytest.raises(ValueError, match="unknown key"):
        apply_overrides(base, ["total_timestep=5"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(base, ["oops"])
