"""BridgeClient's send-now/receive-later split (what agent.vec.BridgeVecEnv drives N sims with), over
real ZeroMQ in one process; runs under 3.6 and 3.11."""
import time

import pytest
import zmq

from bridge.client import BridgeClient
from bridge.errors import BridgeError, BridgeTimeoutError, RemoteSpecError
from tests.both.test_bridge import ACTION, serve  # noqa: F401 (serve is a fixture)
from tests.peers.counting_peer import CountingHandler, frame_of


def open_client(endpoint, **options):
    client = BridgeClient(endpoint, **options)
    client.hello()
    client.reset()
    return client


def receive(client, timeout=5.0):
    """Waits on the client's wait_sockets with a poller, as BridgeVecEnv does, then takes the tick."""
    poller = zmq.Poller()
    for sock in client.wait_sockets:
        poller.register(sock, zmq.POLLIN)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tick = client.recv_tick(block=False)
        if tick is not None:
            return tick
        poller.poll(100)
    raise AssertionError("no tick within {} s".format(timeout))


def test_send_then_receive_is_a_step_and_keeps_the_sequence(serve):
    server = serve()
    with open_client(server.endpoint) as client:
        for expected in range(1, 6):
            client.send_step(ACTION)
            assert client.in_flight
            tick = client.recv_tick()
            assert not client.in_flight
            assert tick.frame == expected and frame_of(tick.observation["image"]) == expected
        assert client.step(ACTION).frame == 6  # step() is the same two halves
        assert client._seq == 2 + 6  # hello, reset, six steps: one request each
        client.send_reset(seed=4)
        assert client.recv_tick().frame == 4000


def test_a_non_blocking_receive_says_none_until_the_reply_is_there(serve):
    server = serve(CountingHandler(step_delay=0.3))
    with open_client(server.endpoint) as client:
        client.send_step(ACTION)
        assert client.recv_tick(block=False) is None  # the server is still sleeping
        assert client.in_flight
        tick = receive(client)
        assert tick.frame == 1 and not client.in_flight


def test_a_second_send_while_a_tick_is_in_flight_is_refused_and_nothing_is_skipped(serve):
    server = serve()
    with open_client(server.endpoint) as client:
        client.send_step(ACTION)
        with pytest.raises(BridgeError, match="still in flight"):
            client.send_step(ACTION)
        with pytest.raises(BridgeError, match="still in flight"):
            client.send_reset()
        assert client.recv_tick().frame == 1
        assert client.step(ACTION).frame == 2
    with BridgeClient(server.endpoint) as idle:
        with pytest.raises(BridgeError, match="without a step or reset in flight"):
            idle.recv_tick()


def test_the_deadline_runs_from_the_send_and_a_late_reply_is_dropped(serve):
    server = serve(CountingHandler(step_delay=0.5))
    with open_client(server.endpoint, timeout=0.2) as client:
        client.send_step(ACTION)
        time.sleep(0.3)
        with pytest.raises(BridgeTimeoutError, match=server.endpoint):
            client.recv_tick(block=False)
        assert not client.in_flight
        client.timeout = 5.0
        tick = client.step(ACTION)  # the late reply to frame 1 arrives first and is dropped
        assert tick.frame == 2 and frame_of(tick.observation["image"]) == 2


def test_a_reply_already_here_at_the_deadline_still_counts(serve):
    server = serve()
    with open_client(server.endpoint, timeout=0.2) as client:
        client.send_step(ACTION)
        time.sleep(0.4)  # the caller looks late; the reply came long ago
        assert client.recv_tick(block=False).frame == 1


def test_remote_errors_surface_at_the_receive_and_end_the_request(serve):
    server = serve()
    with open_client(server.endpoint) as client:
        client.send_step({"throttle": float("nan"), "steer": 0.0})
        with pytest.raises(RemoteSpecError, match="NaN"):
            receive(client)
        assert not client.in_flight
        assert client.step(ACTION).frame == 1


def test_one_poller_gathers_many_clients_in_any_order(serve):
    delays = [0.6, 0.0, 0.3]
    servers = [serve(CountingHandler(step_delay=d)) for d in delays]
    clients = [open_client(s.endpoint) for s in servers]
    try:
        poller = zmq.Poller()
        owner = {}
        for index, client in enumerate(clients):
            for sock in client.wait_sockets:
                poller.register(sock, zmq.POLLIN)
                owner[sock] = index
        for step in range(1, 4):
            for client in clients:
                client.send_step({"throttle": 0.1 * step, "steer": 0.0})
            ticks, order = {}, []
            deadline = time.monotonic() + 10.0
            while len(ticks) < len(clients) and time.monotonic() < deadline:
                for sock, _ in poller.poll(100):
                    index = owner[sock]
                    if index not in ticks:
                        tick = clients[index].recv_tick(block=False)
                        if tick is not None:
                            ticks[index] = tick
                            order.append(index)
            assert sorted(ticks) == [0, 1, 2]
            assert all(t.frame == step for t in ticks.values())
            assert all(t.measurements["echo"] == pytest.approx(0.1 * step) for t in ticks.values())
            assert order[0] == 1  # the fastest sim's reply is taken first, not in index order
    finally:
        for client in clients:
            client.close()


def test_close_with_a_tick_in_flight_is_clean(serve):
    server = serve(CountingHandler(step_delay=0.2))
    client = open_client(server.endpoint)
    client.send_step(ACTION)
    client.close()  # abandons the step; the close request still ends the session
    assert client.wait_sockets == ()
    deadline = time.monotonic() + 5.0
    while server.handler.sessions_closed == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.handler.sessions_closed == 1
