"""The built-in world: determinism, clock, physics, a drivable circuit, events and cameras.

Runs under Python 3.6 (numpy 1.19) and 3.11 (numpy 2): 3.6 syntax only.
"""
import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import ProtocolError, SpecError
from bridge.schema import MEASUREMENT_SPEC, VEHICLE_CONTROL_SPEC, VehicleControl
from bridge.spec import validate_fields
from carla_client.builtin import BuiltinWorld, PurePursuit, TrackParams, VehicleParams
from carla_client.builtin.road import Track
from carla_client.builtin.texture import TAG_CAR, TAG_ROAD, TAG_ROAD_LINE, TAG_SKY, TAG_TERRAIN
from carla_client.builtin.vehicle import VehicleState, advance
from carla_client.sensors import observation_fields, parse_sensors

EVENTS = [{"name": "collision", "type": "sensor.other.collision"},
          {"name": "lane_invasion", "type": "sensor.other.lane_invasion"}]
STATE_ONLY = parse_sensors(EVENTS)
DT = 0.05


def cameras(size=32, view="chase", kinds=("rgb", "semantic_segmentation", "depth")):
    return parse_sensors([{"name": kind, "type": "sensor.camera." + kind, "view": view,
                           "width": size, "height": size, "fov": 90} for kind in kinds] + EVENTS)


def random_controls(seed, count):
    rng = np.random.RandomState(seed)
    return [VehicleControl(throttle=float(rng.uniform(0.2, 1.0)),
                           steer=float(rng.uniform(-0.4, 0.4)),
                           brake=float(rng.uniform(0, 1)) if rng.uniform() < 0.1 else 0.0,
                           hand_brake=bool(rng.uniform() < 0.02),
                           reverse=bool(rng.uniform() < 0.05))
            for _ in range(count)]


def fingerprint(tick):
    """Everything a tick carries except its frame numbering, as bytes."""
    return ([(k, v.dtype.str, v.shape, v.tobytes()) for k, v in sorted(tick.observation.items())],
            [(k, np.asarray(v).tobytes()) for k, v in sorted(tick.measurements.items())],
            [sorted((k, v) for k, v in e.items() if k != "frame") for e in tick.events])


def drive(world, controls, seed=3, options=None):
    ticks = [world.reset(seed=seed, options=options or {})]
    ticks += [world.step(c) for c in controls]
    return ticks


def drive_lap(world, driver, max_ticks=3000, options=None):
    """Drives ``driver`` until one lap is complete; returns every tick."""
    ticks = [world.reset(seed=0, options=options or {})]
    driver.reset()
    while ticks[-1].measurements["route_completion"] < 1.0 and len(ticks) < max_ticks:
        ticks.append(world.step(driver.control(ticks[-1].measurements)))
    return ticks


# -- spec, clock, determinism --------------------------------------------------------------------

def test_spec_matches_the_sensors_and_the_shared_specs():
    sensors = cameras(24)
    world = BuiltinWorld(sensors=sensors, tick_seconds=0.1)
    spec = world.spec()
    assert list(spec.observation) == observation_fields(sensors)
    assert spec.measurements == MEASUREMENT_SPEC and spec.action == VEHICLE_CONTROL_SPEC
    assert spec.tick_seconds == 0.1
    assert world.name == "builtin" and world.deterministic


def test_ticks_match_the_spec():
    world = BuiltinWorld(sensors=cameras(16), npc_vehicles=4)
    spec = world.spec()
    for tick in drive(world, random_controls(0, 30)):
        fields = validate_fields(spec.observation, tick.observation, "observation")
        for field in spec.observation:
            assert tick.observation[field.name].dtype == np.dtype(field.dtype)
            assert tick.observation[field.name].shape == field.shape
            assert fields[field.name].shape == field.shape
        validate_fields(spec.measurements, tick.measurements, "measurements")
        for event in tick.events:
            assert event["frame"] == tick.frame


def test_frames_count_ticks_and_sim_time_follows_the_frame():
    world = BuiltinWorld(sensors=STATE_ONLY, tick_seconds=0.1)
    previous = None
    for _ in range(2):  # the clock runs on across resets, like CARLA's: a reset is one tick
        first = world.reset(seed=1)
        assert first.frame == (1 if previous is None else previous.frame + 1)
        assert first.sim_time == pytest.approx(first.frame * 0.1, abs=1e-9)
        previous = first
        for control in random_controls(1, 50):
            tick = world.step(control)
            assert tick.frame == previous.frame + 1
            assert tick.sim_time == pytest.approx(tick.frame * 0.1, abs=1e-9)
            previous = tick


def test_same_seed_and_actions_give_byte_identical_ticks():
    controls = random_controls(42, 120)
    worlds = [BuiltinWorld(sensors=cameras(24), seed=5, npc_vehicles=6) for _ in range(2)]
    runs = [[fingerprint(t) for t in drive(w, controls, seed=9, options={"random_start": True})]
            for w in worlds]
    assert runs[0] == runs[1]
    # and the same world again, after other episodes
    drive(worlds[0], controls[:10], seed=1)
    again = [fingerprint(t) for t in drive(worlds[0], controls, seed=9,
                                           options={"random_start": True})]
    assert again == runs[0]


def test_the_world_seed_decides_the_circuit_and_the_reset_seed_the_episode():
    a, b = BuiltinWorld(sensors=STATE_ONLY, seed=0), BuiltinWorld(sensors=STATE_ONLY, seed=1)
    assert a.track.length != b.track.length
    starts = {}
    for seed in (1, 2, 1):
        m = a.reset(seed=seed, options={"random_start": True}).measurements
        assert abs(m["lateral_offset"]) <= 0.5 + 1e-9 and abs(m["heading_error"]) <= 0.1 + 1e-9
        starts.setdefault(seed, []).append(m["location"].tobytes())
    assert starts[1][0] == starts[1][1] != starts[2][0]
    default = a.reset(seed=7).measurements
    assert default["lateral_offset"] == pytest.approx(0.0, abs=1e-9)
    assert default["route_distance"] == 0.0 and default["speed"] == 0.0
    assert a.reset(seed=8).measurements["location"].tobytes() == default["location"].tobytes()


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 99, -5, 2 ** 40 + 1])
def test_circuits_are_closed_drivable_loops_of_the_promised_size(seed):
    track = Track(seed)
    params = TrackParams()
    assert 300.0 <= track.length <= 800.0
    assert track.min_radius >= params.min_radius * 0.95
    route = track.route
    closing = math.hypot(route.x[0] - route.x[-1], route.y[0] - route.y[-1])
    assert closing < 1.0  # the loop is closed (last vertex next to the first)


# -- physics -------------------------------------------------------------------------------------

def run_model(control, seconds, state=None):
    state = state or VehicleState()
    params = VehicleParams()
    trace = [state]
    for _ in range(int(round(seconds / DT))):
        trace.append(advance(trace[-1], control, params, DT))
    return trace


def test_throttle_accelerates_to_a_top_speed_above_30_m_s():
    trace = run_model(VehicleControl(throttle=1.0), 90.0)
    speeds = [s.speed for s in trace]
    assert all(b >= a for a, b in zip(speeds, speeds[1:]))
    assert speeds[20] == pytest.approx(4.0 * 20 * DT, rel=0.1)  # ~4 m/s^2 from rest
    assert 30.0 <= speeds[-1] <= 40.0
    assert trace[-1].x > 1000.0 and abs(trace[-1].y) < 1e-6  # straight ahead along +x


def test_brake_and_hand_brake_stop_the_car_and_hold_it():
    moving = VehicleState(speed=20.0)
    braked = run_model(VehicleControl(brake=1.0), 5.0, moving)
    assert braked[-1].speed == 0.0 and min(s.speed for s in braked) == 0.0  # never rolls back
    stop_time = next(i for i, s in enumerate(braked) if s.speed == 0.0) * DT
    assert 2.0 <= stop_time <= 3.5
    held = run_model(VehicleControl(throttle=1.0, hand_brake=True), 10.0, moving)
    assert held[-1].speed == 0.0 and held[-1].x == held[-2].x


def test_reverse_gear_drives_backwards():
    trace = run_model(VehicleControl(throttle=0.6, reverse=True), 4.0)
    assert trace[-1].speed < -1.0 and trace[-1].x < -2.0
    flat_out = run_model(VehicleControl(throttle=1.0, reverse=True), 30.0)
    assert -8.1 <= flat_out[-1].speed <= -7.0  # the reverse gear's top speed
    world = BuiltinWorld(sensors=STATE_ONLY)
    world.reset(seed=0)
    for _ in range(60):
        tick = world.step(VehicleControl(throttle=0.6, reverse=True))
    assert tick.measurements["route_distance"] < -2.0
    assert tick.measurements["speed"] > 1.0


def test_positive_steer_turns_right():
    world = BuiltinWorld(sensors=STATE_ONLY)
    start = world.reset(seed=0).measurements
    for _ in range(30):
        tick = world.step(VehicleControl(throttle=0.5, steer=0.3))
    m = tick.measurements
    assert m["heading_error"] > 0.05  # yaw grew: clockwise seen from above, CARLA's right turn
    assert m["lateral_offset"] > 0.1  # moved to the right of the lane centre
    turned = (m["yaw"] - start["yaw"] + 180.0) % 360.0 - 180.0
    assert turned > 3.0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(-1, 1), st.floats(0, 1), st.booleans(),
                          st.booleans()), min_size=1, max_size=80),
       st.integers(0, 2 ** 32 - 1))
def test_no_teleporting_and_measurements_stay_consistent(actions, seed):
    world = BuiltinWorld(sensors=STATE_ONLY, npc_vehicles=4)
    previous = world.reset(seed=seed, options={"random_start": True})
    for throttle, steer, brake, hand_brake, reverse in actions:
        tick = world.step(VehicleControl(throttle, steer, brake, hand_brake, reverse))
        m, p = tick.measurements, previous.measurements
        moved = float(np.hypot(*(m["location"][:2] - p["location"][:2])))
        assert moved <= max(m["speed"], p["speed"]) * DT + 1e-9
        assert abs(m["route_distance"] - p["route_distance"]) <= moved * 1.5 + 1e-6
        assert m["speed"] == pytest.approx(float(np.hypot(*m["velocity"][:2])))
        assert m["off_road"] == (abs(m["lateral_offset"] + 1.75) > 3.5)
        validate_fields(MEASUREMENT_SPEC, m, "measurements")
        previous = tick


# -- the circuit is drivable: a scripted lap -----------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_pure_pursuit_drives_a_clean_lap(seed):
    world = BuiltinWorld(sensors=STATE_ONLY, seed=seed)
    ticks = drive_lap(world, PurePursuit(world.track, world.vehicle, target_speed=9.0))
    final = ticks[-1].measurements
    assert final["route_completion"] >= 1.0
    assert final["route_distance"] == pytest.approx(world.track.length, abs=1.0)
    assert not any(t.events for t in ticks)
    assert not any(t.measurements["off_road"] for t in ticks)
    assert max(abs(t.measurements["lateral_offset"]) for t in ticks) < 0.8  # car stays in lane
    assert max(abs(t.measurements["heading_error"]) for t in ticks) < 0.2
    # the lap takes about length / speed: no shortcut, no teleport
    assert len(ticks) * DT >= world.track.length / 9.0


def test_the_scalar_route_pose_is_pose_at_to_the_bit():
    route = BuiltinWorld(sensors=STATE_ONLY, seed=4).track.route
    distances = list(np.random.RandomState(1).uniform(-2, 3, 2000) * route.length)
    distances += [0.0, route.length, 2 * route.length, -1e-20, float(route.s[7])]
    for distance in distances:
        expected = tuple(float(a[0]) for a in route.pose_at(np.array([distance])))
        assert route.pose_at_distance(distance) == expected


def test_pure_pursuit_given_the_worlds_projection_drives_the_same():
    world = BuiltinWorld(sensors=STATE_ONLY, seed=2)
    own, given_ = (PurePursuit(world.track, world.vehicle, target_speed=9.0) for _ in range(2))
    tick = world.reset(seed=0)
    for _ in range(400):
        control = own.control(tick.measurements)
        assert given_.control(tick.measurements, world.route_projection) == control
        tick = world.step(control)


def test_route_distance_keeps_counting_past_the_start_line():
    world = BuiltinWorld(sensors=STATE_ONLY, seed=2)
    driver = PurePursuit(world.track, world.vehicle, target_speed=12.0)
    tick = world.reset(seed=0, options={"start_distance": world.track.length - 30.0})
    for _ in range(200):
        previous = tick
        tick = world.step(driver.control(tick.measurements))
        step = tick.measurements["route_distance"] - previous.measurements["route_distance"]
        assert 0.0 <= step <= 12.5 * DT * 1.2
    assert tick.measurements["route_distance"] > 60.0


# -- events --------------------------------------------------------------------------------------

def test_leaving_the_road_sets_off_road_and_the_barrier_stops_the_car():
    world = BuiltinWorld(sensors=STATE_ONLY)
    world.reset(seed=0)
    ticks = [world.step(VehicleControl(throttle=0.6, steer=0.15)) for _ in range(150)]
    collisions = [e for t in ticks for e in t.events if e["type"] == "collision"]
    assert collisions and collisions[0]["other"] == "barrier" and collisions[0]["intensity"] > 1000
    hit = next(i for i, t in enumerate(ticks) if any(e["type"] == "collision" for e in t.events))
    assert ticks[hit].measurements["speed"] == 0.0 and ticks[hit].measurements["off_road"]
    assert any(t.measurements["off_road"] for t in ticks[:hit])
    invasions = [e for t in ticks[:hit] for e in t.events if e["type"] == "lane_invasion"]
    assert invasions and all(e["markings"] == ["Solid"] for e in invasions)
    # the barrier holds: the car never gets through, however long it pushes
    assert all(t.measurements["lateral_offset"] + 1.75 < 6.0 for t in ticks)


def test_crossing_the_centre_line_is_a_broken_lane_invasion():
    world = BuiltinWorld(sensors=STATE_ONLY)
    driver = PurePursuit(world.track, world.vehicle, target_speed=8.0, offset=-3.5)
    tick = world.reset(seed=0)
    events = []
    for _ in range(200):
        tick = world.step(driver.control(tick.measurements))
        events += tick.events
    assert events and all(e["type"] == "lane_invasion" and e["markings"] == ["Broken"]
                          for e in events)
    assert tick.measurements["lateral_offset"] == pytest.approx(-3.5, abs=0.3)
    assert not tick.measurements["off_road"]


def test_events_need_their_sensors():
    world = BuiltinWorld(sensors=parse_sensors([]))
    world.reset(seed=0)
    ticks = [world.step(VehicleControl(throttle=0.6, steer=0.15)) for _ in range(150)]
    assert not any(t.events for t in ticks)
    assert ticks[-1].measurements["speed"] < 1.0  # the barrier still stops the car


def test_driving_into_npc_traffic_is_a_vehicle_collision():
    world = BuiltinWorld(sensors=STATE_ONLY, seed=0, npc_vehicles=10)
    driver = PurePursuit(world.track, world.vehicle, target_speed=18.0)
    tick = world.reset(seed=4)
    for _ in range(3000):
        tick = world.step(driver.control(tick.measurements))
        hits = [e for e in tick.events if e["type"] == "collision"]
        if hits:
            break
    assert hits and hits[0]["other"] == "vehicle" and hits[0]["intensity"] > 0.0
    assert tick.measurements["speed"] == 0.0


def test_npcs_keep_their_distance_from_a_car_stopped_in_their_lane():
    world = BuiltinWorld(sensors=STATE_ONLY, seed=1, npc_vehicles=8)
    world.reset(seed=2)
    for _ in range(1200):  # one minute parked in the lane: followers queue up behind
        tick = world.step(VehicleControl(brake=1.0))
        assert not tick.events
    x, y, _ = world.traffic.poses_arrays()
    ego = tick.measurements["location"]
    assert np.min(np.hypot(x - ego[0], y - ego[1])) > 5.0


# -- the vehicle ahead, and several circuits -----------------------------------------------------

def test_lead_vehicle_is_the_nearest_npc_ahead_in_the_lane():
    world = BuiltinWorld(sensors=STATE_ONLY, seed=1, npc_vehicles=2)  # NPC 0: our lane, 1: the other
    tick = world.reset(seed=4, options={"start_distance": 100.0})
    traffic = world.traffic
    traffic.sigma[0] = 120.0  # put the lane's NPC 20 m (centre to centre) ahead of the ego
    traffic.sigma[1] = world.track.left_distance(world._tracker.last.index) - 10.0  # beside, other lane
    traffic._update_poses()
    tick = world.step(VehicleControl(throttle=1.0))
    m, npc_speed = tick.measurements, float(traffic.speed[0])
    ego_speed = m["speed"] * math.cos(m["heading_error"])
    gap = float(traffic.sigma[0]) - (100.0 + m["route_distance"])
    assert m["lead_distance"] == pytest.approx(gap - world.vehicle.length, abs=1e-6)
    assert 15.0 - 1.0 < m["lead_distance"] < 15.5 + 1.0
    assert m["lead_closing_speed"] == pytest.approx(ego_speed - npc_speed, abs=1e-6)
    assert npc_speed > 0.0
    traffic.sigma[0] = 100.0 + m["route_distance"] + 80.0  # beyond the 50 m range
    traffic._update_poses()
    m = world.step(VehicleControl()).measurements
    assert (m["lead_distance"], m["lead_closing_speed"]) == (50.0, 0.0)
    for field in MEASUREMENT_SPEC:
        field.validate(m[field.name])


def test_lead_vehicle_against_the_lane_and_without_traffic():
    world = BuiltinWorld(sensors=STATE_ONLY, seed=1, npc_vehicles=2)
    world.reset(seed=0)
    traffic = world.traffic
    traffic.sigma[1], traffic.speed[1] = 200.0, 6.0
    # in the other lane, driving along the route (against that lane's order), the NPC comes at us
    distance, closing = traffic.lead(1, 230.0, False, 8.0, 4.6, 50.0)
    assert distance == pytest.approx(30.0 - 4.6) and closing == pytest.approx(8.0 + 6.0)
    assert traffic.lead(1, 170.0, False, 8.0, 4.6, 50.0) == (50.0, 0.0)  # it is behind us
    alone = BuiltinWorld(sensors=STATE_ONLY, seed=1).reset(seed=0).measurements
    assert (alone["lead_distance"], alone["lead_closing_speed"]) == (50.0, 0.0)


def test_several_circuits_drawn_per_reset_or_named():
    world = BuiltinWorld(sensors=STATE_ONLY, seed=10, circuits=3, npc_vehicles=2)
    assert world.world_seeds == (10, 11, 12)
    seen = set()
    for seed in range(12):
        world.reset(seed=seed)
        seen.add((world.seed, round(world.track.length, 3)))
    assert {s for s, _ in seen} == {10, 11, 12} and len(seen) == 3
    first = fingerprint(world.reset(seed=5))
    circuit = world.seed
    world.reset(seed=6)
    assert fingerprint(world.reset(seed=5)) == first and world.seed == circuit  # reproducible
    world.reset(seed=0, options={"world_seed": 12})
    assert world.seed == 12 and world.track.length == Track(12).length
    with pytest.raises(SpecError, match="world_seed 13 is not served"):
        world.reset(seed=0, options={"world_seed": 13})
    with pytest.raises(SpecError):
        BuiltinWorld(sensors=STATE_ONLY, circuits=0)


# -- cameras -------------------------------------------------------------------------------------

def test_chase_camera_sees_sky_above_and_road_in_the_lower_middle():
    world = BuiltinWorld(sensors=cameras(64), seed=0)
    tick = world.reset(seed=0)
    rgb, tags, depth = (tick.observation[k] for k in ("rgb", "semantic_segmentation", "depth"))
    assert rgb.shape == (64, 64, 4) and rgb.dtype == np.uint8 and np.all(rgb[..., 3] == 255)
    assert tags.shape == (64, 64) and depth.dtype == np.float32
    assert np.all(tags[:8] == TAG_SKY) and np.all(depth[:8] == 1000.0)
    lower = tags[48:, 8:56]
    not_car = lower[lower != TAG_CAR]
    assert np.mean(np.isin(not_car, [TAG_ROAD, TAG_ROAD_LINE])) > 0.6
    assert np.any(tags[32:, 24:40] == TAG_CAR)  # the ego, seen from behind
    # road and grass look different, and the picture is not flat
    colour = rgb[..., :3].astype(float)
    road, grass = colour[tags == TAG_ROAD].mean(axis=0), colour[tags == TAG_TERRAIN].mean(axis=0)
    assert np.abs(road - grass).max() > 30.0
    assert rgb[..., :3].std() > 20.0
    # ground depth grows towards the horizon
    column = depth[40:, 2]
    assert np.all(np.diff(column) < 0)


def test_camera_images_change_as_the_car_moves():
    world = BuiltinWorld(sensors=cameras(32, kinds=("rgb",)), seed=0)
    first = world.reset(seed=0).observation["rgb"]
    driver = PurePursuit(world.track, world.vehicle)
    tick = world.step(driver.control(world.reset(seed=0).measurements))
    for _ in range(40):
        tick = world.step(driver.control(tick.measurements))
    assert tick.observation["rgb"].tobytes() != first.tobytes()


def test_birdeye_camera_sees_the_ego_on_the_road_from_above():
    world = BuiltinWorld(sensors=cameras(64, view="birdeye", kinds=("semantic_segmentation",)))
    tags = world.reset(seed=0).observation["semantic_segmentation"]
    assert tags[32, 32] == TAG_CAR and not np.any(tags == TAG_SKY)
    assert np.mean(np.isin(tags, [TAG_ROAD, TAG_ROAD_LINE])) > 0.1
    # the image's top is the car's forward: the road (a straight at the start) runs ahead
    assert tags[8, 32] in (TAG_ROAD, TAG_ROAD_LINE) and tags[32, 30] in (TAG_ROAD, TAG_ROAD_LINE)
    assert tags[32, 2] == TAG_TERRAIN and tags[32, 61] == TAG_TERRAIN


def test_npcs_show_up_in_the_cameras():
    sensors = cameras(48, view="birdeye", kinds=("semantic_segmentation",))
    world = BuiltinWorld(sensors=sensors, seed=0, npc_vehicles=14)
    ego_only = None
    most = 0
    tick = world.reset(seed=0)
    driver = PurePursuit(world.track, world.vehicle)
    for _ in range(400):
        tick = world.step(driver.control(tick.measurements))
        cars = int(np.sum(tick.observation["semantic_segmentation"] == TAG_CAR))
        ego_only = cars if ego_only is None else min(ego_only, cars)
        most = max(most, cars)
    assert most > ego_only * 1.5


# -- configuration errors ------------------------------------------------------------------------

def test_configuration_and_usage_errors_are_clear():
    with pytest.raises(SpecError, match="CARLA"):
        BuiltinWorld(sensors=parse_sensors([{"name": "l", "type": "sensor.lidar.ray_cast"}]))
    with pytest.raises(SpecError, match="width"):
        BuiltinWorld(sensors=parse_sensors([{"name": "c", "type": "sensor.camera.rgb",
                                             "width": 0}]))
    with pytest.raises(SpecError, match="npc_vehicles"):
        BuiltinWorld(sensors=STATE_ONLY, npc_vehicles=10000)
    with pytest.raises(SpecError, match="tick_seconds"):
        BuiltinWorld(sensors=STATE_ONLY, tick_seconds=0.0)
    world = BuiltinWorld(sensors=STATE_ONLY)
    with pytest.raises(ProtocolError, match="reset"):
        world.step(VehicleControl())
    with pytest.raises(SpecError, match="random_start"):
        world.reset(seed=0, options={"teleport": True})
    world.reset(seed=0)
    world.stop()
    with pytest.raises(ProtocolError):
        world.step(VehicleControl())


def test_out_of_range_controls_are_clipped_not_fatal():
    world = BuiltinWorld(sensors=STATE_ONLY)
    world.reset(seed=0)
    tick = world.step(VehicleControl(throttle=float("nan"), steer=7.0, brake=-3.0))
    assert all(np.all(np.isfinite(np.asarray(v, dtype=float))) for v in tick.measurements.values())


# -- through the real bridge: the shared compliance suite ---------------------------------------

try:
    from carla_client.compliance import WorldServerCompliance
except ImportError:  # pragma: no cover - the suite lives next to this file in the repository
    WorldServerCompliance = None


if WorldServerCompliance is not None:
    class TestBuiltinWorldServer(WorldServerCompliance):
        deterministic = True

        @pytest.fixture
        def endpoint(self):
            from bridge.server import BridgeServer
            from carla_client.serve import WorldSessionHandler

            world = BuiltinWorld(sensors=cameras(16), npc_vehicles=3)
            server = BridgeServer(WorldSessionHandler(world), bind="tcp://127.0.0.1:0")
            stop = threading.Event()
            thread = threading.Thread(target=server.serve, args=(stop.is_set, 0.02), daemon=True)
            thread.start()
            try:
                yield server.endpoint
            finally:
                stop.set()
                thread.join(timeout=5)
                server.close()
                world.close()
