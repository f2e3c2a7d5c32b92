"""CurveZMQ between trainer and sim side: keys, who gets served, who does not. Runs under 3.6 and 3.11."""
import os
import shutil
import stat
import time

import pytest
import zmq

from bridge import keys
from bridge.client import BridgeClient
from bridge.errors import BridgeError, PeerDisconnectedError
from bridge.keys import CurveError, create_keys, load_client_keys
from tests.peers.counting_peer import CountingHandler, RunningServer

ACTION = {"throttle": 0.5, "steer": 0.0}


def test_this_libzmq_has_curve():
    assert zmq.has("curve"), "pyzmq's wheel should bundle a libzmq with CURVE"


def test_keys_are_written_once_with_private_secrets(tmp_path, capsys):
    directory = str(tmp_path / "keys")
    assert keys.main([directory]) == 0
    assert sorted(os.listdir(directory)) == sorted(keys.KEY_FILES)
    for name in keys.KEY_FILES:
        mode = stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode)
        assert mode == (0o600 if name.endswith("_secret") else 0o644), (name, oct(mode))
    before = {n: open(os.path.join(directory, n), "rb").read() for n in keys.KEY_FILES}
    capsys.readouterr()
    assert keys.main([directory]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert before == {n: open(os.path.join(directory, n), "rb").read() for n in keys.KEY_FILES}
    assert keys.check_key_directory(directory, "server") == []
    assert keys.check_key_directory(directory, "client") == []
    os.chmod(os.path.join(directory, "client.key_secret"), 0o644)
    assert "readable by others" in keys.check_key_directory(directory, "client")[0]


def make_key_dirs(root):
    """The trainer's and sim side's directory under ``root``, plus a stranger with its own keys but
    the right server.key (so the sim side itself is what refuses it)."""
    good, stranger = os.path.join(str(root), "good"), os.path.join(str(root), "stranger")
    create_keys(good)
    create_keys(stranger)
    os.remove(os.path.join(stranger, "server.key"))
    shutil.copy(os.path.join(good, "server.key"), os.path.join(stranger, "server.key"))
    return good, stranger


@pytest.fixture
def key_dirs(tmp_path):
    return make_key_dirs(tmp_path)


@pytest.fixture
def curve_server(key_dirs):
    server = RunningServer(CountingHandler(), curve=key_dirs[0])
    yield server
    server.close()


def test_the_keyed_trainer_is_served_and_its_key_owns_the_session(curve_server, key_dirs):
    with BridgeClient(curve_server.endpoint, curve=key_dirs[0]) as client:
        client.hello()
        assert client.reset(seed=1).frame == 1000
        assert client.step(ACTION).frame == 1001
        public = load_client_keys(key_dirs[0]).public.decode("ascii")
        assert curve_server.server.session.user == public


def test_clients_without_keys_or_with_an_unknown_key_get_no_service(curve_server, key_dirs):
    with BridgeClient(curve_server.endpoint, curve=key_dirs[0]) as trainer:
        trainer.hello()
        trainer.reset()
        for wait in (0.0, 0.5):  # 0.5: refused before it sends anything
            with BridgeClient(curve_server.endpoint, timeout=30.0) as unkeyed:
                time.sleep(wait)
                started = time.monotonic()
                # a mechanism mismatch (CurveError), or the server closed first (a dropped connection)
                with pytest.raises((CurveError, PeerDisconnectedError), match="requires CurveZMQ"):
                    unkeyed.ping()
                assert time.monotonic() - started < 20.0
        with BridgeClient(curve_server.endpoint, curve=key_dirs[1], timeout=30.0) as stranger:
            with pytest.raises(CurveError, match="refused our CURVE key"):  # (or, when the
                stranger.hello()  # connection closed before the refusal arrived, says it may have)
        assert trainer.step(ACTION).frame == 1
        assert curve_server.handler.sessions_opened == 1


def test_every_client_key_in_the_directory_is_accepted_but_not_the_servers(key_dirs):
    good, stranger = key_dirs
    shutil.copy(os.path.join(stranger, "client.key"), os.path.join(good, "second-trainer.key"))
    server = RunningServer(CountingHandler(), curve=good)
    try:
        with BridgeClient(server.endpoint, curve=stranger, timeout=30.0) as second:
            assert second.ping()["sim"]["name"] == "counting"
    finally:
        server.close()
    assert keys.client_public_keys(good) == [os.path.join(good, "client.key"),
                                             os.path.join(good, "second-trainer.key")]


def test_missing_keys_are_a_clear_error(tmp_path):
    with pytest.raises(CurveError, match="missing CURVE key file"):
        BridgeClient("tcp://127.0.0.1:5556", curve=str(tmp_path))
    with pytest.raises(CurveError, match="missing CURVE key file"):
        RunningServer(CountingHandler(), curve=str(tmp_path))
    create_keys(str(tmp_path / "k"))
    os.remove(str(tmp_path / "k" / "client.key"))
    with pytest.raises(CurveError, match="no client public key"):
        RunningServer(CountingHandler(), curve=str(tmp_path / "k"))


def test_remote_binds_need_curve_or_insecure(key_dirs):
    from bridge.server import BridgeServer
    with pytest.raises(BridgeError, match="without authentication"):
        BridgeServer(CountingHandler(), bind="tcp://0.0.0.0:0", allow_remote=True)
    with BridgeServer(CountingHandler(), bind="tcp://0.0.0.0:0", allow_remote=True,
                      curve=key_dirs[0]) as server:
        assert server.endpoint.startswith("tcp://0.0.0.0:")
