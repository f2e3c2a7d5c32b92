"""``--world carla084`` end to end: carla084_server and carla_client under the sim side's Python (3.6
here), the trainer's side under this interpreter. The compliance suite runs through each 0.8.4 client
option (our wire client; the PythonClient API through its test double), and the Gymnasium env steps
through the bridge, including an episode lost to the server's ServerTimeOut."""
import os
import time

import pytest

from carla_client.compliance import WorldServerCompliance
from tests.both.test_carla084_server import free_port_block
from tests.peers.processes import REPO_ROOT, ChildProcess

DOUBLE = os.path.join(REPO_ROOT, "tests", "pythonclient_double")


def start_server(sim_python, *args):
    port = free_port_block()
    child = ChildProcess(sim_python, "carla_client.carla084_server",
                         ["--port", str(port), "--seed", "2"] + list(args))
    child.port = port
    return child


def start_client(sim_python, port, legacy_client, *args, env=None):
    return ChildProcess(sim_python, "carla_client",
                        ["--world", "carla084", "--host", "127.0.0.1", "--port", str(port),
                         "--legacy-client", legacy_client, "--bind", "tcp://127.0.0.1:0"]
                        + list(args), env=env)


@pytest.fixture(scope="module")
def wire_endpoint(sim_python):
    server = start_server(sim_python)
    client = start_client(sim_python, server.port, "wire")
    yield client.endpoint
    client.close()
    server.close()


@pytest.fixture(scope="module")
def pythonclient_endpoint(sim_python):
    server = start_server(sim_python)
    client = start_client(sim_python, server.port, "pythonclient",
                          env={"PYTHONPATH": os.pathsep.join([DOUBLE, REPO_ROOT])})
    yield client.endpoint
    client.close()
    server.close()


@pytest.mark.crossversion
class TestCarla084WireClient(WorldServerCompliance):
    deterministic = True

    @pytest.fixture
    def endpoint(self, wire_endpoint):
        return wire_endpoint


@pytest.mark.crossversion
class TestCarla084PythonClient(WorldServerCompliance):
    deterministic = True

    @pytest.fixture
    def endpoint(self, pythonclient_endpoint):
        return pythonclient_endpoint

    def test_the_pythonclient_was_used(self, client):
        assert "pythonclient" in client.info.sim_version


@pytest.mark.crossversion
def test_auto_takes_the_wire_client_when_no_pythonclient_is_installed(wire_endpoint):
    from bridge.client import BridgeClient
    with BridgeClient(wire_endpoint, timeout=20.0) as client:
        client.hello()
        assert client.info.sim_name == "carla084" and "wire" in client.info.sim_version


@pytest.mark.crossversion
@pytest.mark.slow
@pytest.mark.parametrize("legacy_client", ["wire", "pythonclient"])
def test_the_env_steps_through_and_a_server_timeout_truncates_the_episode(sim_python, legacy_client):
    from agent.env import CarlaBridgeEnv

    server = start_server(sim_python, "--server-timeout", "1500")
    env = {"PYTHONPATH": os.pathsep.join([DOUBLE, REPO_ROOT])} if legacy_client == "pythonclient" \
        else None
    client = start_client(sim_python, server.port, legacy_client, "--server-timeout", "1.5",
                          env=env)
    try:
        with CarlaBridgeEnv(client.endpoint, timeout=20.0, reconnect=True) as env:
            obs, info = env.reset(seed=0)
            assert env.observation_space.contains(obs)
            for _ in range(20):
                obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
                assert env.observation_space.contains(obs)
                if terminated or truncated:
                    env.reset()
            time.sleep(2.5)  # a long "PPO update": longer than the server's ServerTimeOut
            _, _, terminated, truncated, info = env.step(env.action_space.sample())
            assert truncated and not terminated and info.get("bridge_reconnected")
            obs, info = env.reset(seed=1)  # a new 0.8.4 episode
            _, _, _, truncated, info = env.step(env.action_space.sample())
            assert not info.get("bridge_reconnected")
    finally:
        client.close()
        server.close()
