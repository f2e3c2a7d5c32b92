"""The lead-vehicle measurements on CARLA 0.9 (carla_client/carla_lead.py), with the fake server.

The fake world is a straight lane along +x (centre y = 0, 3.5 m wide); vehicles drive at 10 m/s x
throttle. Cars are 4.6 m long (bounding-box half length 2.3 m), so bumper to bumper is the centre gap
minus 4.6 m.
"""
import pytest

from bridge.schema import LEAD_RANGE, VehicleControl
from carla_client.carla_lead import lane_ahead, lead_vehicle
from tests import fake_carla
from tests.carla.support import make_world


def _vehicle(server, x, y=0.0, yaw=0.0, throttle=0.0):
    carla = server.carla
    blueprint = fake_carla.FakeBlueprint("vehicle.audi.tt")
    actor = server.add_actor(blueprint, carla.Transform(carla.Location(x=x, y=y, z=0.5),
                                                        carla.Rotation(yaw=yaw)), None)
    actor.control = carla.VehicleControl(throttle=throttle)
    return actor


def test_the_world_reports_the_nearest_vehicle_ahead_in_the_lane(server):
    with make_world(server) as world:
        world.start()
        m = world.reset(seed=0, options={"spawn_point": 2}).measurements  # ego at x = 20
        assert (m["lead_distance"], m["lead_closing_speed"]) == (LEAD_RANGE, 0.0)  # alone
        _vehicle(server, 50.0, throttle=0.5)            # 30 m ahead, 5 m/s
        _vehicle(server, 45.0, y=3.5)                   # nearer, but in the next lane
        _vehicle(server, 10.0, throttle=1.0)            # behind
        _vehicle(server, 90.0)                          # farther ahead in the lane
        m = world.step(VehicleControl(throttle=1.0)).measurements  # ego 10 m/s, now at x = 20.5
        # the lead moved to 50.25: centre gap 29.75, minus 4.6 m of bodies
        assert m["lead_distance"] == pytest.approx(29.75 - 4.6)
        assert m["lead_closing_speed"] == pytest.approx(10.0 - 5.0)
        assert ("get_actors",) in server.calls


def test_a_vehicle_beyond_range_or_overlapping(server):
    with make_world(server) as world:
        world.start()
        world.reset(seed=0, options={"spawn_point": 0})  # ego at x = 0
        far = _vehicle(server, LEAD_RANGE + 10.0)
        m = world.step(VehicleControl()).measurements
        assert (m["lead_distance"], m["lead_closing_speed"]) == (LEAD_RANGE, 0.0)
        far.transform = server.carla.Transform(server.carla.Location(x=3.0, y=0.2, z=0.5),
                                               server.carla.Rotation())
        m = world.step(VehicleControl()).measurements
        assert m["lead_distance"] == 0.0  # bodies overlap: a collision is under way


def test_driving_against_the_lane_looks_the_other_way(server):
    carla = server.carla
    with make_world(server) as world:
        world.start()
        world.reset(seed=0, options={"spawn_point": 3})  # x = 30
        ego = server.vehicles()[0]
        ego.transform = carla.Transform(carla.Location(x=30.0, y=0.0, z=0.5), carla.Rotation(yaw=180.0))
        _vehicle(server, 10.0, yaw=0.0, throttle=0.4)   # ahead of a wrong-way ego, coming at it
        _vehicle(server, 40.0)                          # behind it now
        m = world.step(VehicleControl(throttle=0.5)).measurements  # ego 5 m/s towards -x
        assert m["lead_distance"] == pytest.approx((29.75 - 10.2) - 4.6)
        assert m["lead_closing_speed"] == pytest.approx(5.0 + 4.0)


def test_lane_walk_follows_the_branch_that_turns_least(carla):
    class Wp(object):
        def __init__(self, x, y, yaw, branches=()):
            self.transform = carla.Transform(carla.Location(x=x, y=y), carla.Rotation(yaw=yaw))
            self.lane_width = 3.5
            self.branches = branches

        def next(self, d):
            return list(self.branches) or [Wp(self.transform.location.x + d, 0.0, 0.0)]

    fork = Wp(0.0, 0.0, 0.0, branches=(Wp(1.4, 1.4, 90.0), Wp(2.0, 0.0, 2.0)))
    points = lane_ahead(fork, 6.0)
    assert [round(p[0], 1) for p in points] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert points[-1][4] == pytest.approx(8.0)
    assert lead_vehicle(fake_carla.Obj(id=1), None, [], 30.0) == (30.0, 0.0)  # off the road
