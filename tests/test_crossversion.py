"""The bridge across interpreters: the serving side under the sim venv's Python (3.6 here), the client
under this interpreter (3.11), with real processes and kill -9."""
import signal
import sys
import threading
import time

import pytest

from bridge.client import BridgeClient
from bridge.errors import BridgeTimeoutError, PeerDisconnectedError, RemoteSessionError
from tests.peers.counting_peer import frame_of
from tests.peers.processes import ChildProcess

pytestmark = pytest.mark.crossversion


@pytest.fixture
def children():
    started = []

    def start(python, module, *args):
        started.append(ChildProcess(python, module, list(args)))
        return started[-1]

    yield start
    for child in started:
        child.close()


def serve_counting(children, sim_python, *args):
    return children(sim_python, "tests.peers.counting_peer", "--bind", "tcp://127.0.0.1:0", *args)


def test_the_peer_really_runs_under_another_interpreter(children, sim_python):
    peer = serve_counting(children, sim_python)
    peer_version = peer.ready_line.split()[2]
    assert peer_version != sys.version.split()[0]
    assert peer_version.startswith("3.")


@pytest.mark.parametrize("use_shm", [False, True])
@pytest.mark.parametrize("size", ["8", "300"])
def test_thousands_of_lockstep_steps_across_interpreters(children, sim_python, use_shm, size):
    peer = serve_counting(children, sim_python, "--height", size, "--width", size)
    with BridgeClient(peer.endpoint, use_shm=use_shm) as client:
        info = client.hello()
        assert info.shm is (use_shm and size == "300")  # small arrays never need shared memory
        previous = client.reset(seed=2).frame
        assert previous == 2000
        for i in range(3000):
            throttle = (i % 7) / 7.0
            reply = client.step({"throttle": throttle, "steer": 0.0})
            assert reply.frame == previous + 1, "frame skipped or duplicated"
            assert frame_of(reply.observation["image"]) == reply.frame
            assert reply.measurements["echo"] == pytest.approx(throttle, abs=1e-6)
            previous = reply.frame
        assert client._seq == 3002  # hello, reset and 3000 steps: one request each


def test_killing_the_server_mid_request_is_reported_fast(children, sim_python):
    peer = serve_counting(children, sim_python, "--step-delay", "5")
    timeout = 4.0
    with BridgeClient(peer.endpoint, timeout=timeout) as client:
        client.hello()
        client.reset()
        killer = threading.Timer(0.5, peer.send, (signal.SIGKILL, True))
        killer.start()
        started = time.monotonic()
        with pytest.raises((PeerDisconnectedError, BridgeTimeoutError)) as raised:
            client.step({"throttle": 0.5, "steer": 0.0})
        elapsed = time.monotonic() - started
        killer.join()
        assert elapsed < 2 * timeout
        assert isinstance(raised.value, PeerDisconnectedError), "a dead server should be noticed " \
            "from its dropped connection, not only by the timeout"
        assert elapsed < 2.0
        assert "crashed or was killed" in str(raised.value)


def test_a_server_killed_between_two_requests_is_reported_fast(children, sim_python):
    """The drop is seen before the next request is sent; ZeroMQ would queue that request for a
    reconnect that never comes, so only the connection state can tell."""
    peer = serve_counting(children, sim_python)
    timeout = 10.0
    with BridgeClient(peer.endpoint, timeout=timeout) as client:
        client.hello()
        client.reset()
        peer.send(signal.SIGKILL, True)
        assert peer.wait(timeout=5) is not None
        deadline = time.monotonic() + 5.0  # until the client's monitor has the drop
        while client._monitor.connected and time.monotonic() < deadline:
            client._monitor.poll_disconnected()
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(PeerDisconnectedError, match="has not come back within 1 s of step"):
            client.step({"throttle": 0.5, "steer": 0.0})
        assert time.monotonic() - started < timeout / 2


def test_a_killed_server_is_reported_by_the_timeout_when_the_connection_cannot_tell(children,
                                                                                     sim_python):
    peer = serve_counting(children, sim_python, "--step-delay", "5")
    peer.send(signal.SIGSTOP, group=True)  # alive but silent, its connection stays open
    with BridgeClient(peer.endpoint, timeout=1.0, hello_timeout=1.0) as client:
        started = time.monotonic()
        with pytest.raises(BridgeTimeoutError, match=peer.endpoint):
            client.hello()
        assert time.monotonic() - started < 2.0


def test_killing_the_client_sends_the_server_back_to_waiting_for_hello(children, sim_python):
    peer = serve_counting(children, sim_python)
    trainer = children(sys.executable, "tests.peers.stepping_client", "--connect", peer.endpoint,
                       "--heartbeat", "0.2")
    with BridgeClient(peer.endpoint) as prober:
        assert prober.ping()["session_active"] is True
        trainer.send(signal.SIGKILL, group=True)  # no close, no goodbye
        deadline = time.monotonic() + 5.0
        while prober.ping()["session_active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert prober.ping()["session_active"] is False, "server kept a dead trainer's session"
    with BridgeClient(peer.endpoint) as replacement:
        replacement.hello()
        assert replacement.reset().frame == 0
        assert replacement.step({"throttle": 0.0, "steer": 0.0}).frame == 1


def test_a_stale_session_id_is_refused_after_a_server_restart(children, sim_python):
    peer = serve_counting(children, sim_python)
    with BridgeClient(peer.endpoint) as client:
        client.hello()
        client.reset()
        endpoint = peer.endpoint
        peer.close()
        restarted = children(sim_python, "tests.peers.counting_peer", "--bind", endpoint)
        assert restarted.endpoint == endpoint
        with pytest.raises((RemoteSessionError, PeerDisconnectedError)):
            client.step({"throttle": 0.0, "steer": 0.0})
        client.hello()
        assert client.reset().frame == 0
