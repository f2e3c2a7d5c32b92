"""A session belongs to the connection that opened it; runs under 3.6 and 3.11."""
import logging
import time

import msgpack
import pytest
import zmq

from bridge.client import BridgeClient
from bridge.codec import decode
from bridge.errors import (BridgeError, RemoteSessionBusyError, RemoteSessionError, SessionBusyError,
                           SessionError)
from tests.both.test_bridge import wait_until
from tests.peers.counting_peer import CountingHandler, RunningServer

ACTION = {"throttle": 0.5, "steer": 0.0}


@pytest.fixture
def server():
    running = RunningServer(CountingHandler())
    yield running
    running.close()


def raw_request(endpoint, message, identity=None):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    try:
        sock.connect(endpoint)
        sock.send(msgpack.packb(message, use_bin_type=True))
        assert sock.poll(10000)
        return decode(sock.recv_multipart())
    finally:
        sock.close(linger=0)


def test_a_step_from_another_connection_is_refused_and_not_executed(server):
    with BridgeClient(server.endpoint) as owner:
        session = owner.hello().session
        owner.reset(seed=2)
        frame = owner.step(ACTION).frame
        for cmd in ("step", "reset", "close"):
            reply = raw_request(server.endpoint, {"seq": 9, "cmd": cmd, "session": session,
                                                  "body": {"action": ACTION}})
            assert reply["ok"] is False and reply["error"]["code"] == "SessionError"
            assert "another connection" in reply["error"]["message"]
            assert session not in reply["error"]["message"]
        assert server.handler.frame == frame  # nothing ran
        assert owner.step(ACTION).frame == frame + 1  # and the owner's session is intact


def test_session_ids_never_appear_whole_in_logs(server, caplog):
    with caplog.at_level(logging.DEBUG):
        with BridgeClient(server.endpoint) as owner:
            session = owner.hello().session
            owner.reset()
            raw_request(server.endpoint, {"seq": 1, "cmd": "step", "session": session})
            raw_request(server.endpoint, {"seq": 2, "cmd": "step", "session": session + "x"})
        assert wait_until(lambda: server.server.session is None, 5)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert session[:6] in text and session not in text


def test_hello_while_another_trainer_is_live_is_refused_with_session_busy(server):
    with BridgeClient(server.endpoint, heartbeat_seconds=0.1) as owner, \
            BridgeClient(server.endpoint) as intruder:
        owner.hello()
        owner.reset()
        with pytest.raises(RemoteSessionBusyError) as raised:
            intruder.hello()
        assert isinstance(raised.value, SessionBusyError) and isinstance(raised.value, SessionError)
        assert "another trainer is using" in str(raised.value)
        time.sleep(0.8)  # longer than 5 heartbeat intervals: heartbeats keep the owner live
        with pytest.raises(RemoteSessionBusyError):
            intruder.hello()
        owner.step(ACTION)
        assert server.handler.sessions_opened == 1


def test_the_owner_may_say_hello_again(server):
    with BridgeClient(server.endpoint) as owner:
        first = owner.hello().session
        second = owner.hello().session
        assert first != second
        owner.reset()


def test_hello_takes_over_once_the_owner_dropped_its_connection(server):
    owner = BridgeClient(server.endpoint, heartbeat_seconds=0)
    owner.hello()
    owner.reset()
    owner._close(graceful=False)  # no close command: as if the trainer died
    with BridgeClient(server.endpoint) as successor:
        assert wait_until(lambda: _hello_ok(successor), 5)
        successor.reset()


def _hello_ok(client):
    try:
        client.hello()
        return True
    except RemoteSessionBusyError:
        return False


def test_hello_takes_over_once_the_owner_missed_its_heartbeats(server):
    with BridgeClient(server.endpoint, heartbeat_seconds=0.1) as owner, \
            BridgeClient(server.endpoint) as successor:
        owner.hello()
        owner._stop_heartbeat()  # a frozen trainer: connected, but silent
        assert wait_until(lambda: _hello_ok(successor), 5)
        successor.reset()
        with pytest.raises(RemoteSessionError):
            owner.step(ACTION)


def test_heartbeats_from_another_connection_do_not_keep_a_session_alive(server):
    with BridgeClient(server.endpoint, heartbeat_seconds=0.1) as owner:
        session = owner.hello().session
        owner._stop_heartbeat()
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        try:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and server.server.session is not None:
                sock.send(msgpack.packb({"seq": 0, "cmd": "heartbeat", "session": session},
                                        use_bin_type=True))
                time.sleep(0.05)
            assert server.server.session is None
        finally:
            sock.close(linger=0)


def test_the_memory_guard_never_drops_the_trainers_connection():
    """Over budget all the time: other peers lose their connections, the session owner's is spared."""
    running = RunningServer(CountingHandler())
    try:
        with BridgeClient(running.endpoint, heartbeat_seconds=0) as owner:
            owner.hello()
            owner.reset()
            guard = running.server.guard
            guard.budget, guard.baseline = 1024 * 1024, guard.baseline - 64 * 1024 * 1024
            with BridgeClient(running.endpoint, timeout=1.0) as prober:
                try:
                    prober.ping()
                except BridgeError:
                    pass  # dropped, or answered before the guard looked: either is fine
            assert wait_until(lambda: guard.kicked > 0, 5)
            time.sleep(0.5)
            for frame in range(1, 20):
                assert owner.step(ACTION).frame == frame
    finally:
        running.close()


def test_the_memory_guard_looks_often_only_near_its_budget():
    """Far below the budget the guard sleeps as long as the fastest peer needs to fill the headroom
    (capped), near it every ``interval``: the overshoot bound holds and an idle sim wakes rarely."""
    from bridge.guard import MAX_INTERVAL, PEAK_GROWTH_RATE, ConnectionGuard
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    guard = ConnectionGuard(sock, budget=192 * 1024 * 1024, interval=0.02)
    try:
        far = guard.next_wait(0)
        assert far == pytest.approx(192 * 1024 * 1024 / PEAK_GROWTH_RATE) and 0.02 < far <= MAX_INTERVAL
        assert guard.next_wait(-10 ** 12) == MAX_INTERVAL
        assert guard.next_wait(190 * 1024 * 1024) == 0.02  # 2 MB left: at the short interval
        assert guard.next_wait(300 * 1024 * 1024) == 0.02  # over budget
        assert guard.next_wait(None) == MAX_INTERVAL       # no /proc: nothing to measure
        guard.budget = 0
        assert guard.next_wait(0) == MAX_INTERVAL          # memory checks off
    finally:
        guard.close()
        sock.close(linger=0)
