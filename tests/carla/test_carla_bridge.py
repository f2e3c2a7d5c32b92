"""The CARLA backend's failures as the trainer sees them through the real bridge: the step budget
announced in hello, remote timeouts naming sensor and frame, a lost ego, and recovery by reset.
Runs under 3.11 (carla 0.9.16) and 3.7 (carla 0.9.15); no trainer packages."""
import pytest

from bridge import protocol
from bridge.client import BridgeClient
from bridge.errors import (ActorLostError, BridgeTimeoutError, RemoteActorLostError, RemoteError,
                           RemoteTimeoutError, StepBudgetError)
from tests import fake_carla
from tests.carla.support import ALL_SENSORS, carla_world_served
from tests.compliance import NEUTRAL


def test_hello_announces_the_step_budget_and_the_client_timeout_fits_it(carla, tcp_endpoint):
    server = fake_carla.FakeServer(carla)
    with carla_world_served(carla, tcp_endpoint, server, timeout=1.5) as (_, bridge):
        with BridgeClient(bridge.endpoint, timeout=0.5) as client:
            info = client.hello()
            assert info.step_budget == 1.5
            assert client.timeout == pytest.approx(1.5 + protocol.step_budget_margin(1.5))
            assert client.timeout > info.step_budget
            client.reset(seed=0)
            server.tick_seconds_taken = 0.8  # longer than the 0.5 s the client asked for
            assert client.step(NEUTRAL).frame == server.frame
        with BridgeClient(bridge.endpoint, timeout=60.0) as patient:
            patient.hello()
            assert patient.timeout == 60.0, "a timeout that already fits is left alone"


def test_a_client_that_may_not_adapt_refuses_the_server_and_releases_the_world(carla, tcp_endpoint):
    server = fake_carla.FakeServer(carla)
    with carla_world_served(carla, tcp_endpoint, server, timeout=3.0) as (_, bridge):
        with BridgeClient(bridge.endpoint, timeout=1.0, adapt_timeout=False) as client:
            with pytest.raises(StepBudgetError, match="3 s per step") as info:
                client.hello()
            assert isinstance(info.value, ValueError)
        assert bridge.session is None and not server.actors, "the refused session was closed"


def test_a_missing_sensor_frame_arrives_as_a_remote_timeout_naming_sensor_and_frame(
        carla, tcp_endpoint):
    server = fake_carla.FakeServer(carla)
    with carla_world_served(carla, tcp_endpoint, server, sensors=ALL_SENSORS,
                            timeout=0.5) as (_, bridge):
        with BridgeClient(bridge.endpoint, timeout=0.2) as client:
            client.hello()
            client.reset(seed=0)
            server.drop_frames[server.frame + 1] = {"sensor.camera.depth"}
            with pytest.raises(RemoteTimeoutError) as info:
                client.step(NEUTRAL)
            error = info.value
            assert isinstance(error, TimeoutError) and isinstance(error, BridgeTimeoutError)
            assert isinstance(error, RemoteError)
            assert "'depth'" in str(error) and "frame {}".format(server.frame) in str(error)
            first = client.reset(seed=1)  # the same session goes on
            assert client.step(NEUTRAL).frame == first.frame + 1


def test_an_ego_destroyed_from_outside_arrives_as_actor_lost_and_reset_rebuilds(
        carla, tcp_endpoint):
    server = fake_carla.FakeServer(carla)
    with carla_world_served(carla, tcp_endpoint, server) as (_, bridge):
        with BridgeClient(bridge.endpoint, timeout=10.0) as client:
            client.hello()
            client.reset(seed=0)
            server.destroy_from_outside(server.vehicles()[0].id)
            with pytest.raises(RemoteActorLostError) as info:
                client.step(NEUTRAL)
            assert isinstance(info.value, ActorLostError) and "reset" in str(info.value)
            first = client.reset(seed=0)
            assert client.step(NEUTRAL).frame == first.frame + 1
            assert len(server.vehicles()) == 1
