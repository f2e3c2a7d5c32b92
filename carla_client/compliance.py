"""The compliance suite: one abstract test class that every world backend's server must pass.

It ships in the package (as dm_env_rpc ships its ``compliance`` module) so a third-party backend
runs the same checks as ours. In your own test file (pytest is needed; it is not a runtime
dependency of carla_client)::

    import pytest
    from carla_client.compliance import WorldServerCompliance

    class TestMyWorld(WorldServerCompliance):
        deterministic = True             # if same seed + actions give identical observations

        @pytest.fixture
        def endpoint(self):
            ...                          # start `python -m carla_client --world mysim --bind ...`
            yield "tcp://127.0.0.1:PORT"

Everything is checked through the real bridge, the way the trainer sees it.
"""
import time

import numpy as np
import pytest

from bridge.client import BridgeClient
from bridge import protocol
from bridge.errors import (RemoteSessionError, RemoteSnapshotUnsupportedError, RemoteSpecError,
                           SessionBusyError, SessionError, SnapshotUnsupportedError)
from bridge.schema import MEASUREMENT_SPEC, VEHICLE_CONTROL_SPEC

NEUTRAL = {"throttle": 0.0, "steer": 0.0, "brake": 0.0, "hand_brake": False, "reverse": False}


def drive(i):
    """A fixed, varied action sequence for determinism checks."""
    return dict(NEUTRAL, throttle=0.3 + 0.5 * ((i * 7) % 10) / 10.0,
                steer=float(np.sin(i / 9.0)) * 0.6, brake=0.2 if i % 17 == 0 else 0.0)


def assert_matches_spec(spec, reply):
    assert set(reply.observation) == {f.name for f in spec.observation}
    for field in spec.observation:
        value = reply.observation[field.name]
        assert value.dtype == np.dtype(field.dtype), field.name
        assert len(value.shape) == len(field.shape) and all(
            want in (-1, got) for want, got in zip(field.shape, value.shape)), field.name
    assert set(reply.measurements) == {f.name for f in spec.measurements}
    for field in spec.measurements:
        field.validate(reply.measurements[field.name])
    for event in reply.events:
        # an event may be reported one step late with its true (earlier) frame, never early
        assert event["frame"] <= reply.frame and event["type"] in ("collision", "lane_invasion")


class WorldServerCompliance(object):
    """Subclass as ``class TestMyWorld(WorldServerCompliance)`` and provide an ``endpoint`` fixture."""

    deterministic = False

    @pytest.fixture
    def client(self, endpoint):
        with BridgeClient(endpoint, timeout=20.0, copy_arrays=True) as client:
            client.hello()
            yield client

    def test_handshake_announces_vehicle_control_and_measurements(self, client):
        spec = client.info.spec
        assert [f.name for f in spec.action] == [f.name for f in VEHICLE_CONTROL_SPEC]
        assert [f.name for f in spec.measurements] == [f.name for f in MEASUREMENT_SPEC]
        assert spec.tick_seconds > 0
        assert client.info.sim_name and client.info.sim_version

    def test_reset_returns_a_tick_matching_the_spec(self, client):
        assert_matches_spec(client.info.spec, client.reset(seed=1))

    def test_frames_never_repeat_across_episodes(self, client):
        seen = []
        for episode in range(3):
            seen.append(client.reset(seed=episode).frame)
            seen.extend(client.step(NEUTRAL).frame for _ in range(3))
        assert seen == sorted(set(seen)), "a frame id was repeated"

    def test_each_step_advances_exactly_one_tick(self, client):
        tick = client.info.spec.tick_seconds
        previous = client.reset(seed=1)
        for i in range(60):
            reply = client.step(drive(i))
            assert reply.frame == previous.frame + 1
            assert reply.sim_time == pytest.approx(previous.sim_time + tick, abs=1e-6)
            assert_matches_spec(client.info.spec, reply)
            previous = reply

    def test_bad_actions_are_rejected_and_do_not_tick(self, client):
        start = client.reset(seed=1).frame
        for bad in (dict(NEUTRAL, throttle=float("nan")), dict(NEUTRAL, steer=1.5),
                    dict(NEUTRAL, brake=-0.1), {"throttle": 1.0}):
            with pytest.raises(RemoteSpecError):
                client.step(bad)
        assert client.step(NEUTRAL).frame == start + 1

    def test_same_seed_and_actions_give_identical_observations(self, client):
        if not self.deterministic:
            pytest.skip("this backend does not promise determinism")

        def rollout():
            replies = [client.reset(seed=7)]
            replies += [client.step(drive(i)) for i in range(40)]
            start = replies[0].frame  # frame ids run on across episodes, like CARLA's
            return [(r.frame - start,
                     sorted((k, v.tobytes()) for k, v in r.observation.items()),
                     sorted((k, np.asarray(v).tobytes()) for k, v in r.measurements.items()),
                     [dict(e, frame=e["frame"] - start) for e in r.events]) for r in replies]

        assert rollout() == rollout()

    def test_snapshot_restores_exactly_or_is_refused_as_announced(self, client):
        """A world that announces snapshots replays byte-identical ticks (frame, clock, observation,
        measurements, events) after a restore; one that does not refuses with a typed error."""
        client.reset(seed=11)
        for i in range(15):
            client.step(drive(i))
        if not client.info.can_snapshot:
            with pytest.raises(SnapshotUnsupportedError):
                client.snapshot()
            with pytest.raises(RemoteSnapshotUnsupportedError):
                client._request(protocol.SNAPSHOT, {}, 20.0)  # the server refuses too
            return

        def fingerprint(r):
            return (r.frame, r.sim_time, sorted((k, v.tobytes()) for k, v in r.observation.items()),
                    sorted((k, np.asarray(v).tobytes()) for k, v in r.measurements.items()),
                    r.events)

        token = client.snapshot()
        first = [fingerprint(client.step(drive(i))) for i in range(15, 60)]
        client.reset(seed=12)  # a new episode in between changes nothing
        client.restore(token)
        assert [fingerprint(client.step(drive(i))) for i in range(15, 60)] == first

    def test_a_disconnected_trainer_is_replaced_by_a_new_one(self, endpoint, client):
        client.reset(seed=1)
        client.step(NEUTRAL)
        client._close(graceful=False)  # the trainer dies: its connection drops, no close command
        with BridgeClient(endpoint, timeout=20.0) as successor:
            deadline = time.monotonic() + 10.0
            while True:  # the server learns of the drop from ZeroMQ a moment later
                try:
                    successor.hello()
                    break
                except SessionBusyError:
                    assert time.monotonic() < deadline, "the dead trainer's session was kept"
                    time.sleep(0.05)
            first = successor.reset(seed=1)
            assert successor.step(NEUTRAL).frame == first.frame + 1

    def test_a_live_trainer_keeps_its_session(self, endpoint, client):
        client.reset(seed=1)
        with BridgeClient(endpoint, timeout=20.0) as intruder:
            with pytest.raises(SessionBusyError, match="another trainer is using"):
                intruder.hello()
            with pytest.raises(RemoteSessionError):
                intruder._session = client.info.session  # knowing the id is not enough
                intruder.step(NEUTRAL)
        client.step(NEUTRAL)

    def test_steps_need_a_hello(self, endpoint):
        with BridgeClient(endpoint, timeout=20.0) as fresh:
            with pytest.raises(SessionError):
                fresh.step(NEUTRAL)
