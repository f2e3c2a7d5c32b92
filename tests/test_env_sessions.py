"""Two trainers pointed at one sim side: the second one's env fails fast and says why."""
import time

import pytest

from agent.env import CarlaBridgeEnv
from bridge.errors import SessionBusyError


def test_a_second_env_with_reconnect_raises_session_busy_within_10_s(builtin_endpoint):
    with CarlaBridgeEnv(builtin_endpoint, reconnect=True, max_episode_steps=50) as first:
        first.reset(seed=1)
        started = time.monotonic()
        with pytest.raises(SessionBusyError, match=f"another trainer is using {builtin_endpoint}"):
            CarlaBridgeEnv(builtin_endpoint, reconnect=True)
        assert time.monotonic() - started < 10
        for _ in range(5):  # the first trainer never noticed
            _, _, terminated, truncated, info = first.step(first.action_space.sample())
            assert "bridge_reconnected" not in info


def test_a_background_reconnect_gives_up_at_once_when_another_trainer_owns_the_sim():
    """BridgeVecEnv's recovery thread treats SessionBusyError as final, like the env itself."""
    import threading

    from agent.vec import _Recovery

    class BusySim:
        endpoint, reconnect_timeout, calls = "tcp://127.0.0.1:5556", 60.0, 0

        def _reconnect(self, cause, cancelled):
            self.calls += 1
            raise SessionBusyError("another trainer is using tcp://127.0.0.1:5556")

        def close(self):
            pass

    env = BusySim()
    recovery = _Recovery(env, ConnectionError("dropped"), threading.Event())
    with pytest.raises(SessionBusyError, match="another trainer"):
        recovery.future.result(timeout=10)
    assert env.calls == 1
