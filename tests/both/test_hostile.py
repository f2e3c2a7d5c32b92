"""A sim side under attack from raw sockets: typed bounded replies, continued service, bounded memory.

Runs under the sim side's Python 3.6 and the trainer's 3.11. The fuzzed server is a separate process
(tests.peers.counting_peer under this interpreter), so its memory can be measured on its own.
"""
import logging
import os
import sys
import threading
import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import protocol
from bridge.client import BridgeClient
from bridge.codec import decode
from bridge.errors import REMOTE_ERROR_CLASSES, ProtocolError
from tests.peers.counting_peer import CountingHandler, RunningServer
from tests.peers.hostile import RawZmtpPeer, Sampler, SimSide, Trainer, rss_of, unfinished_message

REPLY_LIMIT = 64 * 1024
TYPED_CODES = set(REMOTE_ERROR_CLASSES)

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")


@pytest.fixture(scope="module")
def sim_side():
    """A counting sim side in its own process (this interpreter), with a 64 MB memory budget."""
    child = SimSide(sys.executable, ["--memory-budget", "64"])
    yield child
    child.close()


@pytest.fixture(scope="module")
def raw_socket(sim_side):
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(sim_side.endpoint)
    yield sock
    sock.close(linger=0)
    context.term()


def replies_until_ping(sock, ping_seq, timeout=10.0):
    """Sends a ping and returns the raw replies that arrive before its own."""
    sock.send(msgpack.packb({"seq": ping_seq, "cmd": "ping"}, use_bin_type=True))
    replies = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert sock.poll(max(deadline - time.monotonic(), 0) * 1000), "the sim side stopped replying"
        frames = sock.recv_multipart()
        if len(frames) > 1 and not frames[0]:
            frames = frames[1:]  # we sent an empty first frame: answered as a REQ's delimiter
        reply = decode(frames)
        if isinstance(reply, dict) and reply.get("seq") == ping_seq and reply.get("ok"):
            return replies
        replies.append((sum(len(f) for f in frames), reply))
    raise AssertionError("no reply to the ping within {} s".format(timeout))


scalars = (st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) | st.floats()
           | st.text(max_size=20) | st.binary(max_size=20))
ext_values = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=40))
values = st.recursive(scalars | ext_values, lambda children: (
    st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)),
    max_leaves=12)
commands = st.sampled_from(list(protocol.COMMANDS)) | values
headers = st.fixed_dictionaries({}, optional={
    "seq": st.integers(0, 2 ** 32) | values, "cmd": commands, "session": values, "shm": values,
    "body": values | st.fixed_dictionaries({}, optional={
        "protocol": values | st.just([1, 0]), "seed": values, "options": values,
        "action": values, "heartbeat_seconds": values, "shm": values})})


def as_frames(header, extra_frames):
    try:
        packed = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        packed = b"\xc1"  # never-used msgpack byte: still garbage worth sending
    return [packed] + extra_frames


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.function_scoped_fixture])
@given(message=st.one_of(
    st.tuples(headers, st.lists(st.binary(max_size=64), max_size=3)).map(lambda t: as_frames(*t)),
    st.lists(st.binary(max_size=200), min_size=1, max_size=4),
))
def test_fuzzed_requests_get_typed_bounded_replies(raw_socket, message):
    raw_socket.send_multipart(message)
    for size, reply in replies_until_ping(raw_socket, ping_seq=2 ** 40):
        assert size < REPLY_LIMIT
        assert isinstance(reply, dict) and set(reply) >= {"seq", "ok"}
        if not reply["ok"]:
            error = reply["error"]
            assert error["code"] in TYPED_CODES | {"SessionBusyError"}, error
            assert error["traceback"] == "", error


def test_after_the_fuzzing_a_trainer_is_served_and_memory_stayed_put(sim_side, raw_socket):
    before = rss_of(sim_side.pid)
    for i in range(2000):  # unknown ext types, wrong-typed fields, garbage: after the warm-up above
        raw_socket.send(msgpack.packb({"seq": i, "cmd": {"x": msgpack.ExtType(42, b"a" * 30)},
                                       "body": [msgpack.ExtType(7, b"\x01")]}, use_bin_type=True))
    replies = replies_until_ping(raw_socket, ping_seq=2 ** 41, timeout=30.0)
    assert len(replies) == 2000
    assert {r["error"]["code"] for _, r in replies} == {"ProtocolError"}
    # gross growth only (e.g. requests kept): a 3.6 sim side's RSS settles ~12 MB above its start
    # over its first ~100k messages (allocator arenas; Python's own blocks stay flat), up to ~2 MB
    # of it within 2000. The per-message leak bound is test_rejected_ext_values_do_not_leak's.
    assert rss_of(sim_side.pid) - before < 8 * 1024 * 1024
    with BridgeClient(sim_side.endpoint, timeout=10.0) as client:
        client.hello()
        assert client.reset(seed=1).frame == 1000
        assert client.step({"throttle": 0.5, "steer": 0.0}).frame == 1001


def test_rejected_ext_values_do_not_leak():
    """msgpack 1.0.5 (Python 3.6) leaks ~640 bytes each time an ext_hook raises; ours never does."""
    request = msgpack.packb({"seq": 1, "cmd": "step", "body": {
        "x": msgpack.ExtType(42, b"abc" * 10), "y": msgpack.ExtType(2, b"\x93\xa3<f4\x90\xc4\x01x")}},
        use_bin_type=True)
    def decode_many(count):
        for _ in range(count):
            with pytest.raises(ProtocolError):
                decode([request])

    decode_many(2000)
    before = rss_of(os.getpid())
    decode_many(50000)  # 100k on 3.6 (docs/PROTOCOL.md): 7 bytes/message, was 650
    assert (rss_of(os.getpid()) - before) / 50000 < 50


def test_error_replies_and_log_lines_stay_small_whatever_is_quoted(caplog):
    server = RunningServer(CountingHandler())
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(server.endpoint)

        def request(message):
            sock.send(msgpack.packb(message, use_bin_type=True))
            assert sock.poll(20000)
            return sock.recv_multipart()

        hello = decode(request({"seq": 1, "cmd": "hello", "body": {"protocol": [1, 0]}}))
        session = hello["body"]["session"]
        huge = list(range(2000000))
        for body in ({"seed": huge}, {"seed": "s" * 5000000}, {"action": {"throttle": huge}},
                     {"action": {"x" * 100000: 1}}, {"action": {"throttle": huge, "steer": 0}}):
            cmd = "step" if "action" in body else "reset"
            with caplog.at_level(logging.WARNING, logger="bridge.server"):
                frames = request({"seq": 5, "cmd": cmd, "body": body, "session": session})
            assert sum(len(f) for f in frames) < REPLY_LIMIT
            reply = decode(frames)
            assert reply["ok"] is False and reply["error"]["traceback"] == ""
            assert reply["error"]["code"] in ("ProtocolError", "SpecError"), reply
        assert len(caplog.records) >= 5
        assert all(len(r.getMessage()) < REPLY_LIMIT for r in caplog.records)
    finally:
        sock.close(linger=0)
        server.close()


def test_oversized_reply_becomes_a_typed_error():
    server = RunningServer(CountingHandler(height=64, width=64), max_reply_bytes=8192)
    try:
        with BridgeClient(server.endpoint, timeout=10.0) as client:
            client.hello()
            with pytest.raises(Exception) as raised:
                client.reset()
            assert "exceeds the sim side's limit of 8192" in str(raised.value)
            assert type(raised.value).__name__ == "RemoteProtocolError"
    finally:
        server.close()


@pytest.mark.timeout(120)
def test_unfinished_multipart_messages_cannot_grow_the_sim_side(sim_side):
    """Frames marked "more" and never a last one: dropped at the memory budget (64 MB here); the
    trainer that owns the session keeps being served all along."""
    trainer = Trainer(sim_side.endpoint)
    trainer.start()
    deadline = time.monotonic() + 10
    while trainer.steps < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = rss_of(sim_side.pid)
    sampler = Sampler(sim_side.pid)
    sampler.start()
    stop = threading.Event()
    attackers = [threading.Thread(target=unfinished_message, daemon=True,
                                  args=(sim_side.endpoint, size, frames, stop, batch))
                 for size, frames, batch in ((8 * 1024 * 1024, 40, 1), (1, 2000000, 20000))]
    steps_before = trainer.steps
    for thread in attackers:
        thread.start()
    stop.wait(4.0)
    stop.set()
    for thread in attackers:
        thread.join(20)
    time.sleep(0.3)
    trainer.stop.set()
    trainer.join(15)
    sampler.stop.set()
    sampler.join(5)
    assert trainer.error is None
    assert trainer.steps > steps_before + 10
    # the contract (issue 9): a peer cannot raise the sim side's memory by more than 300 MB. The
    # budget is 64 MB; the rest is what arrives while the guard waits for a CPU on a loaded machine.
    assert sampler.peak - before < 300 * 1024 * 1024


def test_raw_zmtp_peer_is_a_real_dealer(sim_side):
    """The attack tool speaks real ZMTP: a finished message from it gets a normal reply."""
    peer = RawZmtpPeer(sim_side.endpoint)
    try:
        peer.send_frame(msgpack.packb({"seq": 3, "cmd": "ping"}, use_bin_type=True), more=False)
        body, more = peer.recv_frame()
        assert not more and decode([body])["seq"] == 3
    finally:
        peer.close()
