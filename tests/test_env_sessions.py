"""Two trainers pointed at one sim side: the second one's env fails fast and says why."""
import time

import pytest

from agent.env import CarlaBridgeEnv
from bridge.errors import SessionBusyError
from launch.procs import NotReady, free_tcp_endpoint, wait_bridge


@pytest.fixture
def builtin_sim(sim_process):
    endpoint = free_tcp_endpoint()
    proc = sim_process(["-m", "carla_client", "--world", "builtin", "--bind", endpoint])
    try:
        wait_bridge(endpoint, time.monotonic() + 30.0, proc)
    except NotReady as e:
        pytest.fail(str(e))
    return endpoint


def test_a_second_env_with_reconnect_raises_session_busy_within_10_s(builtin_sim):
    with CarlaBridgeEnv(builtin_sim, reconnect=True, max_episode_steps=50) as first:
        first.reset(seed=1)
        started = time.monotonic()
        with pytest.raises(SessionBusyError, match=f"another trainer is using {builtin_sim}"):
            CarlaBridgeEnv(builtin_sim, reconnect=True)
        assert time.monotonic() - started < 10
        for _ in range(5):  # the first trainer never noticed
            _, _, terminated, truncated, info = first.step(first.action_space.sample())
            assert "bridge_reconnected" not in info
