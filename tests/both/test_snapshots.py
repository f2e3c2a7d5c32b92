"""World snapshots: the built-in world's snapshot/restore, the token store, and the snapshot/restore
commands through a real bridge server (capability in hello, bounded tokens, typed refusals, old peers).

Runs under Python 3.6 (the sim side) and 3.11: 3.6 syntax only.
"""
import threading
import warnings

import numpy as np
import pytest

import bridge.client
from bridge import protocol
from bridge.client import BridgeClient, ProtocolVersionWarning
from bridge.errors import (ProtocolError, RemoteSnapshotError, RemoteSnapshotUnsupportedError,
                           SessionError, SnapshotError, SnapshotUnsupportedError)
from bridge.schema import VehicleControl
from bridge.server import BridgeServer
from bridge.snapshots import SnapshotStore
from carla_client.backend import WorldBackend
from carla_client.builtin import BuiltinWorld
from carla_client.serve import WorldSessionHandler
from carla_client.sensors import parse_sensors

SENSORS = parse_sensors([
    {"name": "camera", "type": "sensor.camera.rgb", "view": "chase", "width": 24, "height": 16},
    {"name": "labels", "type": "sensor.camera.semantic_segmentation", "view": "birdeye",
     "width": 16, "height": 16},
    {"name": "collision", "type": "sensor.other.collision"},
    {"name": "lane_invasion", "type": "sensor.other.lane_invasion"}])


def controls(seed, count):
    rng = np.random.RandomState(seed)
    return [VehicleControl(float(rng.uniform(0.2, 1.0)), float(rng.uniform(-0.6, 0.6)),
                           0.5 if rng.uniform() < 0.1 else 0.0) for _ in range(count)]


def as_action(control):
    return dict(control._asdict())


def fingerprint(tick):
    """Everything a tick carries, frame and clock included, as bytes."""
    return (int(tick.frame), float(tick.sim_time),
            [(k, v.dtype.str, v.shape, v.tobytes()) for k, v in sorted(tick.observation.items())],
            [(k, np.asarray(v).tobytes()) for k, v in sorted(tick.measurements.items())],
            [sorted(e.items()) for e in tick.events])


@pytest.fixture(scope="module")
def world():
    with BuiltinWorld(sensors=SENSORS, npc_vehicles=6) as world:
        yield world


# -- the world itself ------------------------------------------------------------------------------

def test_restore_replays_byte_identical_ticks_with_npcs_events_and_rng(world):
    drive = controls(1, 240)
    world.reset(seed=5, options={"random_start": True})
    for control in drive[:40]:
        world.step(control)
    saved = world.snapshot()
    first = [fingerprint(world.step(c)) for c in drive[40:]]
    first.append(fingerprint(world.reset()))  # unseeded: draws from the restored generator
    assert any(tick[4] for tick in first), "the drive should produce events to compare"

    restored = world.restore(saved)
    second = [fingerprint(world.step(c)) for c in drive[40:]]
    second.append(fingerprint(world.reset()))
    assert second == first
    assert restored.frame == first[0][0] - 1


def test_a_snapshot_survives_many_restores_and_different_futures(world):
    world.reset(seed=2)
    for control in controls(2, 10):
        world.step(control)
    saved = world.snapshot()
    at_snapshot = fingerprint(world.restore(saved))
    left = fingerprint(world.step(VehicleControl(throttle=1.0, steer=-0.5)))
    assert fingerprint(world.restore(saved)) == at_snapshot
    right = fingerprint(world.step(VehicleControl(throttle=1.0, steer=0.5)))
    assert left[0] == right[0] and left[2] != right[2], "different actions must diverge"
    assert fingerprint(world.restore(saved)) == at_snapshot
    assert fingerprint(world.step(VehicleControl(throttle=1.0, steer=-0.5))) == left


def test_restoring_one_world_state_does_not_leak_into_another_snapshot(world):
    world.reset(seed=3)
    early = world.snapshot()
    early_tick = fingerprint(world.restore(early))
    for control in controls(3, 20):
        world.step(control)
    late = world.snapshot()
    late_tick = fingerprint(world.restore(late))
    assert fingerprint(world.restore(early)) == early_tick
    assert fingerprint(world.restore(late)) == late_tick
    assert early_tick[0] + 20 == late_tick[0]


def test_nothing_to_snapshot_before_the_first_reset_and_garbage_is_refused():
    with BuiltinWorld(sensors=parse_sensors([]), npc_vehicles=0) as fresh:
        with pytest.raises(SnapshotError, match="first reset"):
            fresh.snapshot()
        fresh.reset(seed=0)
        with pytest.raises(SnapshotError, match="not a snapshot"):
            fresh.restore({"frame": 3})


def test_a_world_without_snapshots_refuses_with_a_typed_error():
    backend = WorldBackend()
    assert backend.supports_snapshot is False
    with pytest.raises(SnapshotUnsupportedError, match="refuses"):
        backend.snapshot()
    with pytest.raises(SnapshotUnsupportedError):
        backend.restore(object())


# -- the token store -------------------------------------------------------------------------------

def test_the_store_keeps_the_newest_tokens_and_drops_the_oldest():
    store = SnapshotStore(2)
    a, b, c = store.add("a"), store.add("b"), store.add("c")
    assert len({a, b, c}) == 3 and len(store) == 2
    assert store.get(b) == "b" and store.get(c) == "c"
    with pytest.raises(SnapshotError, match="newest 2"):
        store.get(a)
    store.get(b)  # restoring does not make a token younger: b is still the next to go
    store.add("d")
    assert b not in store and c in store
    with pytest.raises(ProtocolError):
        store.get(7)
    store.clear()
    assert len(store) == 0
    with pytest.raises(ValueError):
        SnapshotStore(0)


# -- through the bridge ----------------------------------------------------------------------------

class _Served(object):
    def __init__(self, handler, server_class=BridgeServer, **options):
        self.server = server_class(handler, bind="tcp://127.0.0.1:0", **options)
        self.endpoint = self.server.endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.server.serve, args=(self._stop.is_set, 0.02),
                                        daemon=True)
        self._thread.start()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.close()


@pytest.fixture
def serve(world):
    started = []

    def start(backend=None, server_class=BridgeServer, **options):
        started.append(_Served(WorldSessionHandler(backend or world), server_class, **options))
        return started[-1]

    yield start
    for served in started:
        served.close()


def test_hello_announces_the_capability_and_restore_is_byte_identical_over_the_bridge(serve):
    served = serve(max_snapshots=5)
    drive = [as_action(c) for c in controls(4, 60)]
    with BridgeClient(served.endpoint, copy_arrays=True) as client:
        info = client.hello()
        assert info.can_snapshot is True and info.max_snapshots == 5
        client.reset(seed=9, options={"random_start": True})
        before = [fingerprint(client.step(a)) for a in drive[:10]]
        token = client.snapshot()
        assert isinstance(token, str) and token
        first = [fingerprint(client.step(a)) for a in drive[10:]]
        restored = client.restore(token)
        assert fingerprint(restored) == before[-1]
        second = [fingerprint(client.step(a)) for a in drive[10:]]
        assert second == first


def test_tokens_are_bounded_and_die_with_their_session(serve):
    served = serve(max_snapshots=2)
    with BridgeClient(served.endpoint) as client:
        client.hello()
        client.reset(seed=1)
        oldest = client.snapshot()
        client.step(as_action(VehicleControl(throttle=1.0)))
        kept = client.snapshot()
        client.step(as_action(VehicleControl(throttle=1.0)))
        client.snapshot()  # a third one drops the oldest
        with pytest.raises(RemoteSnapshotError, match="newest 2"):
            client.restore(oldest)
        frame = client.step(as_action(VehicleControl())).frame  # a failed restore changed nothing
        assert client.restore(kept).frame == frame - 2
        with pytest.raises(RemoteSnapshotError, match="unknown snapshot token"):
            client.restore("0123456789abcdef")
        client.hello()  # a new session: every token of the old one is gone
        client.reset(seed=1)
        with pytest.raises(RemoteSnapshotError):
            client.restore(kept)


def test_snapshot_before_reset_is_a_typed_remote_error(serve):
    fresh = BuiltinWorld(sensors=parse_sensors([]))
    served = serve(fresh)
    with BridgeClient(served.endpoint) as client:
        client.hello()
        with pytest.raises(RemoteSnapshotError, match="first reset"):
            client.snapshot()
    fresh.close()


class _NoSnapshots(BuiltinWorld):
    name = "frozen"
    supports_snapshot = False

    def snapshot(self):
        raise AssertionError("the server must refuse before asking the world")

    restore = snapshot


def test_a_world_that_cannot_snapshot_is_announced_and_refused_on_both_sides(serve):
    world = _NoSnapshots(sensors=parse_sensors([]))
    served = serve(world)
    with BridgeClient(served.endpoint) as client:
        info = client.hello()
        assert info.can_snapshot is False and info.max_snapshots == 0
        client.reset(seed=0)
        with pytest.raises(SnapshotUnsupportedError, match="frozen"):
            client.snapshot()  # refused locally: nothing was sent
        with pytest.raises(SnapshotUnsupportedError):
            client.restore("0123456789abcdef")
        # a client that asks anyway gets the typed error from the server
        with pytest.raises(RemoteSnapshotUnsupportedError, match="frozen.*refuses"):
            client._request(protocol.SNAPSHOT, {}, 5.0)
        assert client.step(as_action(VehicleControl())).frame == 2  # still serving
    world.close()


def test_snapshot_needs_a_session():
    with BridgeClient("tcp://127.0.0.1:9", heartbeat_seconds=0) as client:
        with pytest.raises(SessionError):
            client.snapshot()


def test_a_protocol_1_0_client_still_works_with_this_server(serve, monkeypatch):
    served = serve()
    monkeypatch.setattr(bridge.client, "PROTOCOL_VERSION", (1, 0))
    with BridgeClient(served.endpoint) as client:
        with pytest.warns(ProtocolVersionWarning, match="minor"):
            client.hello()
        first = client.reset(seed=0)
        assert client.step(as_action(VehicleControl(throttle=0.5))).frame == first.frame + 1


class _ServerOfProtocol10(BridgeServer):
    """Answers hello as a protocol 1.0 server did: no capabilities."""

    def _hello(self, peer, body):
        reply = BridgeServer._hello(self, peer, body)
        reply.pop("capabilities")
        reply["protocol"] = [1, 0]
        return reply


def test_this_client_with_a_protocol_1_0_server_refuses_snapshots_locally(serve):
    served = serve(server_class=_ServerOfProtocol10)
    with BridgeClient(served.endpoint) as client:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            info = client.hello()
        assert any(issubclass(w.category, ProtocolVersionWarning) for w in caught)
        assert info.protocol == "1.0" and info.can_snapshot is False
        client.reset(seed=0)
        with pytest.raises(SnapshotUnsupportedError, match="protocol 1.0"):
            client.snapshot()
        assert client.step(as_action(VehicleControl())).frame > 0
