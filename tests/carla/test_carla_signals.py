"""``python -m carla_client --world carla`` stopped by a signal restores the CARLA world: SIGHUP (a
closed terminal or SSH session) and SIGQUIT take SIGTERM's path. The served world is CarlaWorld on
the fake server, in the child process (tests/peers/fake_carla_client.py)."""
import json
import signal
import sys

import pytest

from bridge.client import BridgeClient
from carla_client.__main__ import STOP_SIGNALS, install_stop_handlers
from tests.compliance import NEUTRAL
from tests.peers.processes import ChildProcess


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT],
                         ids=lambda s: s.name)
def test_a_stop_signal_restores_the_world_and_destroys_the_actors(carla, sig):
    child = ChildProcess(sys.executable, "tests.peers.fake_carla_client",
                         ["--bind", "tcp://127.0.0.1:0", "--carla-timeout", "5"])
    try:
        with BridgeClient(child.endpoint, timeout=20.0) as client:
            client.hello()
            first = client.reset(seed=1)
            assert client.step(NEUTRAL).frame == first.frame + 1
            child.send(sig)
            assert child.wait(20) == 0
        log = child.read_log()
        state = json.loads(log.split("state ", 1)[1].splitlines()[0])
        assert state == {"restored": True, "actors": [], "synchronous": False,
                         "spawned": state["spawned"]} and state["spawned"] > 1
        assert "stopped by {}; world restored".format(sig.name) in log
    finally:
        child.close()


def test_every_stop_signal_of_the_platform_is_handled():
    previous = {}
    try:
        for name in STOP_SIGNALS:
            if hasattr(signal, name):
                previous[name] = signal.getsignal(getattr(signal, name))
        installed = install_stop_handlers(lambda *a: None)
        expected = [getattr(signal, n) for n in STOP_SIGNALS if hasattr(signal, n)]
        assert installed == [int(s) for s in expected]
        assert {"SIGHUP", "SIGQUIT"} <= {signal.Signals(s).name for s in installed}
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
