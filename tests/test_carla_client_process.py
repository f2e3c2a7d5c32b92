"""``python -m carla_client`` as users run it: the built-in world served under the sim side's Python (3.6
here) to a client under this interpreter, checked by the compliance suite; plus the process lifecycle."""
import json
import signal
import time

import pytest

from bridge.client import BridgeClient
from carla_client.compliance import NEUTRAL, WorldServerCompliance
from tests.peers.processes import ChildProcess


def serve_builtin(sim_python, *args):
    return ChildProcess(sim_python, "carla_client",
                        ["--world", "builtin", "--bind", "tcp://127.0.0.1:0"] + list(args))


@pytest.fixture(scope="module")
def builtin_server(sim_python):
    child = serve_builtin(sim_python)
    yield child
    child.close()


class TestBuiltinWorldAcrossInterpreters(WorldServerCompliance):
    deterministic = True

    @pytest.fixture
    def endpoint(self, builtin_server):
        return builtin_server.endpoint


def test_the_server_runs_under_the_sim_interpreter(builtin_server, sim_python):
    import sys
    assert builtin_server.ready_line.split()[3] != sys.version.split()[0]


def test_sensor_config_file_changes_the_announced_spec(sim_python, tmp_path):
    config = tmp_path / "sensors.json"
    config.write_text(json.dumps([
        {"name": "front", "type": "sensor.camera.rgb", "width": 32, "height": 24, "x": 1.5, "z": 1.4},
        {"name": "top", "type": "sensor.camera.semantic_segmentation", "width": 16, "height": 16,
         "view": "birdeye"},
        {"name": "collision", "type": "sensor.other.collision"},
    ]))
    child = serve_builtin(sim_python, "--sensors", str(config))
    try:
        with BridgeClient(child.endpoint) as client:
            spec = client.hello().spec
            assert [(f.name, f.dtype, f.shape) for f in spec.observation] == [
                ("front", "uint8", (24, 32, 4)), ("top", "uint8", (16, 16))]
            reply = client.reset(seed=0)
            assert reply.observation["front"].shape == (24, 32, 4)
    finally:
        child.close()


def test_a_bad_sensor_config_is_a_clear_startup_error(sim_python, tmp_path):
    config = tmp_path / "sensors.json"
    config.write_text(json.dumps([{"name": "x", "type": "sensor.camera.thermal"}]))
    with pytest.raises(RuntimeError, match="unknown type 'sensor.camera.thermal'"):
        serve_builtin(sim_python, "--sensors", str(config))


def test_refuses_a_non_loopback_bind_without_allow_remote(sim_python):
    with pytest.raises(RuntimeError, match="allow-remote"):
        ChildProcess(sim_python, "carla_client", ["--bind", "tcp://0.0.0.0:0"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_end_the_session_and_exit_cleanly(sim_python, sig):
    child = serve_builtin(sim_python)
    try:
        with BridgeClient(child.endpoint) as client:
            client.hello()
            client.reset(seed=1)
            client.step(NEUTRAL)
            child.send(sig)
            assert child.wait(10) == 0
        log = child.read_log()
        assert "session" in log and "ended" in log
        assert "stopped by {}".format(sig.name) in log
    finally:
        child.close()


def test_serves_trainer_after_trainer(sim_python):
    child = serve_builtin(sim_python, "--idle-timeout", "1")
    try:
        for _ in range(3):
            with BridgeClient(child.endpoint) as client:
                client.hello()
                first = client.reset(seed=3)
                assert client.step(NEUTRAL).frame == first.frame + 1
        with BridgeClient(child.endpoint, heartbeat_seconds=0) as silent:
            silent.hello()
            silent.reset()
            with BridgeClient(child.endpoint) as prober:
                deadline = time.monotonic() + 5
                while prober.ping()["session_active"] and time.monotonic() < deadline:
                    time.sleep(0.05)
                status = prober.ping()
            assert status["session_active"] is False  # idle timeout without heartbeats
            assert status["sessions_served"] == 4
    finally:
        child.close()
