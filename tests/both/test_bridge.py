"""The bridge client and server over real ZeroMQ sockets in one process; runs under 3.6 and 3.11."""
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

import bridge.client
from bridge import protocol
from bridge.client import BridgeClient
from bridge.codec import Encoder, decode
from bridge.errors import (BridgeError, BridgeTimeoutError, RemoteSessionError, RemoteSpecError,
                           RemoteVersionError, SessionError, SpecError, VersionMismatchError)
from bridge.server import BridgeServer
from tests.peers.counting_peer import CountingHandler, RunningServer, frame_of

ACTION = {"throttle": 0.5, "steer": 0.0}


@pytest.fixture
def serve():
    running = []

    def start(handler=None, **options):
        running.append(RunningServer(handler or CountingHandler(), **options))
        return running[-1]

    yield start
    for server in running:
        server.close()


def raw_request(endpoint, frames, timeout=5.0):
    """Sends raw frames from a bare DEALER and returns the decoded reply (None if none came)."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not sock.poll(timeout * 1000):
            return None
        return decode(sock.recv_multipart())
    finally:
        sock.close()


def request_frames(message):
    return [bytes(memoryview(f)) for f in Encoder().encode(message)]


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_lockstep_frames_are_consecutive_and_match_their_observations(serve):
    server = serve()
    with BridgeClient(server.endpoint) as client:
        info = client.hello()
        assert info.sim_name == "counting" and info.protocol == protocol.version_string()
        assert [f.name for f in info.spec.action] == ["throttle", "steer"]
        first = client.reset(seed=3)
        assert first.frame == 3000 and frame_of(first.observation["image"]) == 3000
        previous = first.frame
        for i in range(500):
            throttle = (i % 10) / 10.0
            reply = client.step({"throttle": throttle, "steer": 0.0})
            assert reply.frame == previous + 1
            assert frame_of(reply.observation["image"]) == reply.frame
            assert reply.measurements["echo"] == pytest.approx(throttle)
            assert reply.events == [{"type": "tick", "frame": reply.frame}]
            assert reply.sim_time == pytest.approx(reply.frame * 0.05)
            previous = reply.frame
        p50, p99 = client.stats.percentiles()
        assert 0 < p50 <= p99


@pytest.mark.parametrize("use_shm", [False, True])
def test_large_observations_arrive_intact_over_tcp_and_shared_memory(serve, use_shm):
    server = serve(CountingHandler(height=300, width=400))
    with BridgeClient(server.endpoint, use_shm=use_shm) as client:
        assert client.hello().shm is use_shm
        client.reset()
        kept = []
        for _ in range(5):
            reply = client.step(ACTION)
            image = reply.observation["image"]
            assert image.shape == (300, 400, 4) and not image.flags.writeable
            assert frame_of(image) == reply.frame
            assert (image == image[0, 0]).all()
            kept.append((reply.frame, image))
        # Views stay valid for the next step (two shared-memory slots).
        assert frame_of(kept[-2][1]) == kept[-2][0]


def test_copy_arrays_gives_private_writable_copies(serve):
    server = serve(CountingHandler(height=300, width=400))
    with BridgeClient(server.endpoint, copy_arrays=True) as client:
        client.hello()
        client.reset()
        images = [client.step(ACTION).observation["image"] for _ in range(4)]
        assert [frame_of(i) for i in images] == [1, 2, 3, 4]
        assert images[0].flags.writeable


@pytest.mark.parametrize("action,match", [
    ({"throttle": float("nan"), "steer": 0.0}, "NaN"),
    ({"throttle": float("inf"), "steer": 0.0}, "NaN or infinity"),
    ({"throttle": 2.0, "steer": 0.0}, "upper bound"),
    ({"throttle": 0.5}, "missing"),
    ({"throttle": 0.5, "steer": 0.0, "jump": 1.0}, "unknown"),
    ({"throttle": [0.5, 0.5], "steer": 0.0}, "shape"),
    ({"throttle": "fast", "steer": 0.0}, "dtype"),
])
def test_bad_actions_get_typed_errors_and_do_not_advance_the_world(serve, action, match):
    server = serve()
    with BridgeClient(server.endpoint) as client:
        client.hello()
        client.reset()
        assert client.step(ACTION).frame == 1
        with pytest.raises(RemoteSpecError, match=match) as raised:
            client.step(action)
        assert isinstance(raised.value, (SpecError, ValueError))
        assert client.step(ACTION).frame == 2  # nothing lost, nothing skipped


@pytest.mark.parametrize("frames,code", [
    ([b"\xc1garbage"], "ProtocolError"),
    ([b"\x93\x01"], "ProtocolError"),                                     # truncated header
    ([msgpack.packb([1, 2, 3])], "ProtocolError"),                        # not a map
    ([msgpack.packb({"cmd": "step"})], "ProtocolError"),                  # no seq
    (request_frames({"seq": 1, "cmd": "fly", "body": {}}), "ProtocolError"),
    (request_frames({"seq": 1, "cmd": "step", "session": "nope", "body": {}}), "SessionError"),
    (request_frames({"seq": 1, "cmd": "hello", "body": {"protocol": [99, 0]}}),
     "VersionMismatchError"),
    (request_frames({"seq": 1, "cmd": "hello", "body": {"protocol": "1.0"}}), "ProtocolError"),
    (request_frames({"seq": 1, "cmd": "ping", "body": {"x": np.zeros(100000, np.float32)}})[:1],
     "ProtocolError"),                                                    # missing array frame
    ([msgpack.packb({"seq": 1, "cmd": "ping", "body": {"x": msgpack.ExtType(
        1, msgpack.packb(["|O", [1], 0]))}}, use_bin_type=True), b"\0" * 8], "ProtocolError"),
])
def test_malformed_requests_get_error_replies_and_the_server_keeps_serving(serve, frames, code):
    server = serve()
    reply = raw_request(server.endpoint, frames)
    assert reply is not None and reply["ok"] is False
    assert reply["error"]["code"] == code, reply
    with BridgeClient(server.endpoint) as client:
        client.hello()
        assert client.reset().frame == 0


def test_oversized_requests_are_refused_with_a_typed_error(serve):
    server = serve(max_message_bytes=4096)
    frames = request_frames({"seq": 7, "cmd": "ping", "body": {"blob": b"x" * 5000}})
    reply = raw_request(server.endpoint, frames)
    assert reply == {"seq": 7, "ok": False, "error": {
        "code": "MessageTooLargeError", "message": reply["error"]["message"], "traceback": ""}}
    assert "exceeds the limit of 4096" in reply["error"]["message"]
    assert raw_request(server.endpoint, request_frames({"seq": 8, "cmd": "ping"}))["ok"] is True


def test_req_clients_with_an_empty_delimiter_are_served(serve):
    server = serve()
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(server.endpoint)
        sock.send_multipart(request_frames({"seq": 1, "cmd": "ping"}))
        assert sock.poll(5000)
        reply = decode(sock.recv_multipart())
        assert reply["ok"] and reply["body"]["sim"]["name"] == "counting"
    finally:
        sock.close()


def test_major_version_mismatch_names_both_versions(serve, monkeypatch):
    server = serve()
    monkeypatch.setattr(bridge.client, "PROTOCOL_VERSION", (7, 0))
    with BridgeClient(server.endpoint) as client:
        with pytest.raises(VersionMismatchError, match="7.0") as raised:
            client.hello()
        assert isinstance(raised.value, RemoteVersionError)
        assert protocol.version_string() in str(raised.value)


def test_minor_version_mismatch_warns(serve, monkeypatch):
    server = serve()
    major, minor = protocol.PROTOCOL_VERSION
    monkeypatch.setattr(bridge.client, "PROTOCOL_VERSION", (major, minor + 1))
    with BridgeClient(server.endpoint) as client:
        with pytest.warns(UserWarning, match="minor"):
            client.hello()
        assert client.reset().frame == 0


def test_requests_need_a_session(serve):
    server = serve()
    with BridgeClient(server.endpoint) as client:
        with pytest.raises(SessionError, match="hello"):
            client.step(ACTION)


def test_a_reply_to_a_timed_out_request_is_never_taken_for_the_next_one(serve):
    server = serve(CountingHandler(step_delay=0.4))
    with BridgeClient(server.endpoint, timeout=0.1, hello_timeout=5) as client:
        client.hello()
        client.timeout = 5.0
        client.reset()
        client.timeout = 0.1
        started = time.monotonic()
        with pytest.raises(BridgeTimeoutError, match=server.endpoint) as raised:
            client.step(ACTION)  # the server still executes it: frame 1
        assert time.monotonic() - started < 0.35
        assert isinstance(raised.value, TimeoutError)
        client.timeout = 5.0
        reply = client.step(ACTION)  # the stale reply for frame 1 arrives first and is dropped
        assert reply.frame == 2 and frame_of(reply.observation["image"]) == 2


def test_no_server_gives_an_actionable_timeout():
    with BridgeClient("tcp://127.0.0.1:9", timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(BridgeTimeoutError, match="(?i)is carla_client running") as raised:
            client.hello()
        assert time.monotonic() - started < 1.5
        assert "tcp://127.0.0.1:9" in str(raised.value)


def test_a_new_hello_takes_over_a_dead_trainer_and_the_old_client_gets_a_session_error(serve):
    server = serve()
    with BridgeClient(server.endpoint, heartbeat_seconds=0.05) as first, \
            BridgeClient(server.endpoint) as second:
        first.hello()
        first.reset()
        first._stop_heartbeat()  # frozen: connected but silent (tests/both/test_sessions.py: busy)
        assert wait_until(lambda: _hello_succeeds(second), timeout=5.0)
        assert server.handler.sessions_closed == 1
        with pytest.raises(RemoteSessionError, match="not the current session"):
            first.step(ACTION)
        assert second.reset().frame == 0


def _hello_succeeds(client):
    try:
        client.hello()
        return True
    except SessionError:
        return False


def test_a_silent_trainer_loses_its_session_and_the_world_is_restored(serve):
    server = serve()
    client = BridgeClient(server.endpoint, heartbeat_seconds=0.05)
    try:
        client.hello()
        client.reset()
        client._heartbeat.stopped.set()  # the trainer "dies": no more heartbeats or requests
        with BridgeClient(server.endpoint) as prober:  # other peers' pings must not keep it alive
            assert wait_until(lambda: not prober.ping()["session_active"], timeout=3.0)
        assert server.handler.sessions_closed == 1
        assert server.server.session is None
        with pytest.raises(RemoteSessionError, match="hello"):
            client.step(ACTION)
    finally:
        client.close()
    with BridgeClient(server.endpoint) as replacement:  # back to waiting for a new hello
        replacement.hello()
        assert replacement.reset().frame == 0


def test_heartbeats_keep_a_busy_trainers_session(serve):
    server = serve()
    with BridgeClient(server.endpoint, heartbeat_seconds=0.5) as client:
        client.hello()
        client.reset()
        # beyond 5 missed heartbeats (2.5 s): only the heartbeat thread talks (a beat may come up
        # to a second late on a loaded CI machine without the session ending)
        time.sleep(3.5)
        assert server.handler.sessions_closed == 0
        assert client.step(ACTION).frame == 1


def test_close_ends_the_session_at_once_and_is_idempotent(serve):
    server = serve()
    client = BridgeClient(server.endpoint)
    client.hello()
    client.close()
    client.close()
    assert server.handler.sessions_closed == 1
    with pytest.raises(BridgeError, match="closed"):
        client.ping()


def test_ping_reports_status_without_touching_sessions(serve):
    server = serve()
    with BridgeClient(server.endpoint) as client, BridgeClient(server.endpoint) as prober:
        client.hello()
        status = prober.ping()
        assert status["session_active"] is True and status["sim"]["name"] == "counting"
        assert client.reset().frame == 0


def test_binding_beyond_loopback_needs_consent():
    with pytest.raises(BridgeError, match="allow-remote"):
        BridgeServer(CountingHandler(), bind="tcp://0.0.0.0:0")
    with pytest.raises(BridgeError, match="--curve DIR"):
        BridgeServer(CountingHandler(), bind="tcp://0.0.0.0:0", allow_remote=True)
    with BridgeServer(CountingHandler(), bind="tcp://0.0.0.0:0", allow_remote=True,
                      insecure=True) as server:
        assert server.endpoint.startswith("tcp://0.0.0.0:")


def test_remote_errors_survive_pickling_for_subprocess_vector_envs():
    import pickle
    from bridge.errors import remote_error
    for code in ("SpecError", "SessionError", "VersionMismatchError", "ProtocolError", "KeyError"):
        error = remote_error(code, "boom", "Traceback ...")
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert (copy.remote_type, copy.remote_message, copy.remote_traceback) == (
            code, "boom", "Traceback ...")
        assert str(copy) == str(error)


def test_a_handler_slower_than_the_heartbeat_timeout_keeps_its_session(serve):
    server = serve(CountingHandler(step_delay=0.5))
    with BridgeClient(server.endpoint, heartbeat_seconds=0.05) as client:  # 0.25 s of silence ends it
        client.hello()
        client.reset()
        assert client.step(ACTION).frame == 1
        assert client.step(ACTION).frame == 2
        assert server.handler.sessions_closed == 0


@pytest.mark.parametrize("dtype", ["=f4", "<f16", "<c32", "|O8", "<U4", "<M8", "V8"])
def test_non_portable_dtypes_are_refused_on_decode(dtype):
    from bridge.codec import EXT_INLINE
    from bridge.errors import ProtocolError
    header = msgpack.packb({"x": msgpack.ExtType(EXT_INLINE, msgpack.packb(
        [dtype, [1], b"\0" * 16], use_bin_type=True))}, use_bin_type=True)
    with pytest.raises(ProtocolError, match="dtype"):
        decode([header])


@pytest.mark.parametrize("value,match", [(float("nan"), "NaN"), (-float("inf"), "NaN"),
                                         (1.5, "upper"), (-2, "lower"), (True, None)])
def test_scalar_fast_path_agrees_with_the_general_path(value, match):
    from bridge.spec import FieldSpec
    spec = FieldSpec("steer", "float32", (), -1.0, 1.0)
    for candidate in (value, np.float64(value)):
        if match is None:
            assert spec.validate(candidate) == np.float32(value)
            assert spec.validate(candidate).dtype == np.float32
        else:
            with pytest.raises(SpecError, match=match):
                spec.validate(candidate)
    flag = FieldSpec("reverse", "bool", (), 0, 1)
    assert flag.validate(True).dtype == np.bool_ and flag.validate(False) == np.False_
    with pytest.raises(SpecError):
        flag.validate(0.5)


def test_ipv6_loopback_works():
    try:
        srv = BridgeServer(CountingHandler(), bind="tcp://[::1]:0")
    except BridgeError as e:
        pytest.skip("no IPv6 loopback here: {}".format(e))
    stop = threading.Event()
    thread = threading.Thread(target=srv.serve, args=(stop.is_set, 0.02), daemon=True)
    thread.start()
    try:
        assert srv.endpoint.startswith("tcp://[::1]:")
        with BridgeClient(srv.endpoint) as client:
            client.hello()
            assert client.reset().frame == 0
    finally:
        stop.set()
        thread.join(5)
        srv.close()


def test_a_stale_reply_that_no_longer_decodes_is_dropped_not_fatal(serve):
    """A late reply that referred to shared memory arrives after a new hello that has none: the
    client must skip it (it is not the answer it waits for) rather than fail the new request."""
    server = serve(CountingHandler(height=300, width=400, step_delay=0.4))
    with BridgeClient(server.endpoint, timeout=0.1, hello_timeout=5.0, use_shm=True) as client:
        assert client.hello().shm
        client.timeout = 5.0
        client.reset()
        client.timeout = 0.1
        with pytest.raises(BridgeTimeoutError):
            client.step(ACTION)  # its shm reply arrives late, after the next hello
        client.use_shm = False
        client.hello()  # no shared memory in this session: the late reply cannot be decoded
        client.timeout = 5.0
        assert client.reset().frame == 0


def test_an_int_beyond_the_dtype_range_is_a_spec_error():
    from bridge.spec import FieldSpec
    with pytest.raises(SpecError, match="does not fit"):
        FieldSpec("gear", "int8", ()).validate(10 ** 30)
