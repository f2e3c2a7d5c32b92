"""CarlaWorld against the REAL carla package's types and a fake server (tests/fake_carla.py).

scripts/run_tests.py runs this directory twice: under Python 3.11 with carla 0.9.16 and under
Python 3.7 with carla 0.9.15 (.venvs/sim-3.7), so nothing here may import the trainer's packages.

What needs a server (Client, World, Map, actors, Traffic Manager) is faked and records every call;
everything else (WorldSettings, Transform, VehicleControl, Vector3D, command.DestroyActor, LaneType)
is CARLA's own. Tests needing ``carla`` skip with a visible reason when it is missing, and fail under
CI=true. One test talks to the real client with no server; one needs a real server (carla_server mark).
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from bridge.client import BridgeClient
from bridge.errors import BridgeError, BridgeTimeoutError, SpecError
from carla_client import carla_api
from bridge.schema import MEASUREMENT_SPEC, VEHICLE_CONTROL_SPEC, VehicleControl
from carla_client.carla_backend import (DEFAULT_ROUTE_LENGTH, CarlaConnectionError, CarlaSetupError,
                                        CarlaTimeoutError, CarlaUnavailableError, CarlaWorld,
                                        SensorTimeoutError, lane_axes, wrap_degrees)
from carla_client.carla_sensors import (EventQueue, FrameQueue, blueprint_attributes, to_event,
                                        to_observation)
from carla_client.sensors import default_sensors, parse_sensors
from tests import fake_carla
from tests.carla.support import (ALL_SENSORS, NEUTRAL, H, W, assert_restored, carla_world_served,
                                 make_world)
from tests.compliance import WorldServerCompliance

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- import and construction --------------------------------------------------------------------

def test_backend_imports_without_carla_and_explains_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "carla", None)  # `import carla` now fails
    with pytest.raises(CarlaUnavailableError) as info:
        CarlaWorld()
    assert isinstance(info.value, BridgeError)
    message = str(info.value)
    assert "pip install carla==0.9.16" in message and "PythonAPI/carla/dist" in message


def test_carla_modules_import_under_the_sim_interpreter(sim_python):
    code = ("import sys; sys.modules['carla'] = None\n"
            "from carla_client.carla_backend import CarlaWorld, CarlaUnavailableError\n"
            "try:\n    CarlaWorld()\nexcept CarlaUnavailableError as e:\n    print('unavailable:', e)\n")
    out = subprocess.run([sim_python, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=REPO_ROOT),
                         timeout=60).stdout.decode()
    assert "unavailable:" in out and "pip install carla==" in out, out


def test_spec_names_the_sensors_measurements_and_controls(server):
    world = make_world(server, tick_seconds=0.1)
    spec = world.spec()
    assert [f.name for f in spec.observation] == ["camera", "depth", "semantic", "lidar"]
    assert spec.observation[0].shape == (H, W, 4) and spec.observation[3].shape == (-1, 4)
    assert spec.measurements == tuple(MEASUREMENT_SPEC)
    assert spec.action == tuple(VEHICLE_CONTROL_SPEC)
    assert spec.tick_seconds == 0.1
    # the client library's version before connecting: 0.9.16 on 3.11, 0.9.15 on 3.7
    assert world.name == "carla" and world.version == carla_api.module_version(server.carla)
    assert world.version.startswith("0.9.1")
    assert not server.calls, "constructing must not touch the server"


def test_bad_arguments_are_rejected(server):
    with pytest.raises(CarlaSetupError):
        make_world(server, tick_seconds=0)


# -- start and stop: settings changed and restored ---------------------------------------------

def test_start_makes_world_and_traffic_manager_synchronous(server):
    world = make_world(server, tick_seconds=0.1, tm_port=8123)
    world.start()
    assert server.settings.synchronous_mode is True
    assert server.settings.fixed_delta_seconds == pytest.approx(0.1)
    assert server.tm_sync == {8123: True}
    names = server.names()
    assert names.index("tm.set_synchronous_mode") < names.index("apply_settings") < names.index(
        "try_spawn_actor"), "TM first, then the world, then actors (generate_traffic.py's order)"
    assert ("set_timeout", 2.0) in server.calls
    assert world.version == server.version
    # one settling tick, and every sensor listens
    assert len(server.calls_named("tick")) == 1
    assert [s.is_listening for s in server.sensors()] == [True] * len(ALL_SENSORS)
    world.stop()
    assert_restored(server)


def test_other_world_settings_are_left_alone(server):
    server.settings.no_rendering_mode = True
    server.settings.max_substeps = 16
    server.original_settings = fake_carla.copy_settings(server.carla, server.settings)
    with make_world(server) as world:
        world.start()
        server.settings.max_culling_distance = 5.0  # someone else changes a setting meanwhile
        assert server.settings.no_rendering_mode is True and server.settings.max_substeps == 16
    assert server.settings.max_culling_distance == 5.0, "restore touches only what start changed"
    assert server.settings.synchronous_mode is False
    assert server.settings.fixed_delta_seconds is None


def test_stop_destroys_every_actor_with_one_batch_and_is_idempotent(server):
    world = make_world(server)
    world.start()
    spawned = [a.id for a in server.spawned]
    assert len(spawned) == 1 + len(ALL_SENSORS)
    world.stop()
    batches = server.calls_named("apply_batch")
    assert len(batches) == 1
    kinds, ids = batches[0][1], batches[0][2]
    assert set(kinds) == {"DestroyActor"} and sorted(ids) == sorted(spawned)
    assert ids[-1] == spawned[0], "sensors are destroyed before the vehicle they carry"
    names = server.names()
    stops = [i for i, name in enumerate(names) if name == "stop"]
    assert len(stops) == len(ALL_SENSORS) and max(stops) < names.index("apply_batch")
    assert_restored(server)
    count = len(server.calls)
    world.stop()
    world.close()
    assert len(server.calls) == count, "a second stop/close must not touch the server"


def test_exception_during_step_still_restores_on_exit(server):
    with pytest.raises(CarlaTimeoutError):
        with make_world(server) as world:
            world.start()
            world.reset(seed=1, options={})
            server.tick_error = RuntimeError("time-out of 2000ms while waiting for the simulator")
            world.step(NEUTRAL)
    assert_restored(server)


def test_sensor_timeout_names_the_sensor_and_frame_and_exit_restores(server):
    world = make_world(server, timeout=0.3)
    world.start()
    server.drop.add("sensor.camera.depth")
    started = time.monotonic()
    with pytest.raises(SensorTimeoutError) as info:
        world.step(NEUTRAL)
    assert time.monotonic() - started < 2.0
    assert isinstance(info.value, BridgeTimeoutError) and isinstance(info.value, TimeoutError)
    assert "'depth'" in str(info.value) and str(server.frame) in str(info.value)
    # the session survives a timed-out step: the stale data of that frame is skipped next time
    server.drop.clear()
    assert world.step(NEUTRAL).frame == server.frame
    world.close()
    assert_restored(server)


def test_failed_start_after_partial_spawn_cleans_up(server):
    server.fail_spawn.add("sensor.lidar.ray_cast")
    world = make_world(server)
    with pytest.raises(CarlaSetupError) as info:
        world.start()
    assert "'lidar'" in str(info.value)
    # the ego and the three cameras spawned before the failure are gone, settings are back
    assert len(server.spawned) == 4 and sorted(server.destroyed) == sorted(
        a.id for a in server.spawned)
    assert_restored(server)
    count = len(server.calls)
    world.stop()
    assert len(server.calls) == count
    server.fail_spawn.clear()
    world.start()  # a later session starts cleanly
    world.close()
    assert_restored(server)


def test_start_without_free_spawn_point_restores_settings(server):
    server.occupied_x = [10.0 * i for i in range(server.spawn_point_count)]
    world = make_world(server)
    with pytest.raises(CarlaSetupError, match="spawn points"):
        world.start()
    assert len(server.calls_named("try_spawn_actor")) == server.spawn_point_count
    assert_restored(server)


def test_occupied_spawn_points_fall_back_to_the_next(server):
    server.occupied_x = [10.0 * i for i in range(server.spawn_point_count - 1)]
    with make_world(server) as world:
        world.start()
        assert server.vehicles()[0].transform.location.x == pytest.approx(
            10.0 * (server.spawn_point_count - 1))


def test_a_world_already_synchronous_at_our_tick_is_not_touched(carla):
    server = fake_carla.FakeServer(carla, synchronous=True, fixed_delta_seconds=0.05)
    with make_world(server, tick_seconds=0.05) as world:
        world.start()
        world.step(NEUTRAL)
    assert not server.calls_named("apply_settings")
    assert not server.calls_named("tm.set_synchronous_mode"), "TM not ours: never touched"
    assert server.settings.synchronous_mode is True, "left synchronous: we did not change it"
    assert not server.actors


def test_only_the_changed_tick_is_restored_when_already_synchronous(carla):
    server = fake_carla.FakeServer(carla, synchronous=True, fixed_delta_seconds=0.1)
    with make_world(server, tick_seconds=0.05) as world:
        world.start()
        assert server.settings.fixed_delta_seconds == pytest.approx(0.05)
    assert server.settings == server.original_settings  # fixed_delta 0.1, still synchronous
    assert not server.calls_named("tm.set_synchronous_mode")


def test_no_server_gives_a_connection_error_and_touches_nothing(server):
    server.running = False
    world = make_world(server, port=2345)
    with pytest.raises(CarlaConnectionError) as info:
        world.start()
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, BridgeError)
    assert ":2345" in str(info.value) and "CarlaUE4.sh" in str(info.value)
    world.stop()
    assert server.names() == ["Client", "set_timeout"]


def test_a_new_session_after_stop_starts_over(server):
    world = make_world(server)
    for _ in range(3):
        world.start()
        world.reset(seed=0, options={})
        world.step(NEUTRAL)
        world.stop()
        assert_restored(server)
    assert len(server.calls_named("apply_settings")) == 6


def test_town_is_loaded_once_at_start_before_settings_are_saved(server):
    with make_world(server, town="Town03") as world:
        world.start()
        world.reset(seed=1, options={})
        world.reset(seed=2, options={})
    assert server.calls_named("load_world") == [("load_world", "Town03")]
    assert server.names().index("load_world") < server.names().index("apply_settings")
    timeouts = [c[1] for c in server.calls_named("set_timeout")]
    assert timeouts[1] > 2.0 and timeouts[-1] == 2.0, "loading a town gets a longer timeout"
    with make_world(server, town="Nowhere") as world:
        with pytest.raises(CarlaSetupError, match="Town01"):
            world.start()


# -- reset and step ------------------------------------------------------------------------------

def test_reset_moves_the_ego_instead_of_respawning(server):
    with make_world(server) as world:
        world.start()
        spawns = len(server.calls_named("try_spawn_actor")) + len(server.calls_named("spawn_actor"))
        ego = server.vehicles()[0]
        ego.velocity = server.carla.Vector3D(5.0, 0.0, 0.0)
        for seed in (1, 2, 3):
            tick = world.reset(seed=seed, options={})
            assert tick.events == [] and tick.measurements["route_distance"] == 0.0
        moves = server.calls_named("set_transform")
        assert len(moves) == 3 and all(c[1] == ego.id for c in moves)
        stills = server.calls_named("set_target_velocity")
        assert stills and all(c[2] == server.carla.Vector3D(0, 0, 0) for c in stills)
        assert server.calls_named("set_target_angular_velocity")
        controls = [c[2] for c in server.calls_named("apply_control")]
        assert all(c == server.carla.VehicleControl() for c in controls)
        assert len(server.calls_named("try_spawn_actor")) + len(
            server.calls_named("spawn_actor")) == spawns, "no actor created per episode"
        assert server.alive() == sorted(a.id for a in server.spawned)


def test_reset_seed_picks_the_spawn_point_reproducibly(server):
    with make_world(server) as world:
        world.start()

        def spawn_x(seed, options=None):
            world.reset(seed=seed, options=options or {})
            return server.calls_named("set_transform")[-1][2].location.x

        assert spawn_x(5) == spawn_x(5)
        assert len({spawn_x(s) for s in range(20)}) > 1
        assert spawn_x(None, {"spawn_point": 3}) == 30.0
        with pytest.raises(SpecError):
            world.reset(seed=None, options={"spawn_point": 99})
        with pytest.raises(SpecError):
            world.reset(seed=None, options={"route_length": -1})


def test_step_applies_the_control_and_advances_one_frame(server):
    with make_world(server) as world:
        world.start()
        first = world.reset(seed=0, options={})
        tick = world.step(VehicleControl(throttle=0.5, steer=-0.25, brake=0.1, hand_brake=True,
                                         reverse=True))
        control = server.calls_named("apply_control")[-1][2]
        assert isinstance(control, server.carla.VehicleControl)
        assert (control.throttle, control.steer, control.brake, control.hand_brake,
                control.reverse) == (0.5, -0.25, pytest.approx(0.1), True, True)
        assert tick.frame == first.frame + 1 == server.frame
        assert tick.sim_time == pytest.approx(first.sim_time + 0.05)
        given = server.calls_named("tick")[-1][1]
        assert 1.0 < given <= 2.0, "tick gets an explicit timeout: what is left of the step budget"


def test_steps_before_start_are_refused(server):
    world = make_world(server)
    with pytest.raises(BridgeError, match="start"):
        world.step(NEUTRAL)


def test_observations_are_the_ticked_frame_converted(server):
    with make_world(server) as world:
        world.start()
        tick = world.step(NEUTRAL)
        obs = tick.observation
        value = tick.frame % 256
        assert obs["camera"].shape == (H, W, 4) and obs["camera"].dtype == np.uint8
        assert (obs["camera"] == value).all()
        assert obs["semantic"].shape == (H, W) and (obs["semantic"] == value).all()
        expected_depth = (value + value * 256 + value * 65536) / (256 ** 3 - 1) * 1000
        assert obs["depth"].dtype == np.float32
        assert np.allclose(obs["depth"], expected_depth, rtol=1e-5)
        assert obs["lidar"].shape == (2, 4) and obs["lidar"][0, 0] == tick.frame
        for field in world.spec().observation:
            field.validate(obs[field.name])


# -- frame matching ------------------------------------------------------------------------------

def test_late_data_from_another_thread_is_waited_for(server):
    with make_world(server, timeout=3.0) as world:
        world.start()
        server.delay = 0.2
        for _ in range(3):
            tick = world.step(NEUTRAL)
            assert tick.observation["lidar"][0, 0] == tick.frame
            assert (tick.observation["camera"] == tick.frame % 256).all()
        server.join()


def test_stale_data_is_discarded_and_the_ticked_frame_used(server):
    with make_world(server) as world:
        world.start()
        camera = next(s for s in server.sensors() if s.type_id == "sensor.camera.rgb")
        frame = server.frame
        camera.emit(fake_carla.image(frame - 1, W, H))  # a leftover of an earlier frame
        camera.emit(fake_carla.image(frame, W, H))      # and a duplicate of the settled frame
        tick = world.step(NEUTRAL)
        assert tick.frame == frame + 1 and (tick.observation["camera"] == (frame + 1) % 256).all()


def test_frame_queue_handles_out_of_order_arrivals(carla):
    config = ALL_SENSORS[0]
    q = FrameQueue(config)
    for f in (12, 9, 10, 11):
        q.put(fake_carla.image(f, W, H))
    deadline = time.monotonic() + 1.0
    assert q.get(10, deadline).frame == 10   # 12 kept for later, 9 dropped
    assert q.get(11, deadline).frame == 11
    assert q.get(12, deadline).frame == 12   # served from the buffer
    assert q.discarded == 1
    with pytest.raises(SensorTimeoutError, match="frame 13"):
        q.get(13, time.monotonic() + 0.05)


def test_frame_queue_waits_for_data_put_by_another_thread(carla):
    q = FrameQueue(ALL_SENSORS[0])
    timer = threading.Timer(0.1, q.put, args=(fake_carla.image(7, W, H),))
    timer.start()
    try:
        assert q.get(7, time.monotonic() + 2.0).frame == 7
    finally:
        timer.cancel()


# -- events --------------------------------------------------------------------------------------

def test_events_of_the_ticked_frame_are_reported_once(server):
    carla = server.carla
    with make_world(server) as world:
        world.start()
        reset = world.reset(seed=0, options={})
        f = reset.frame + 1
        collision = next(s for s in server.sensors() if s.type_id == "sensor.other.collision")
        lanes = next(s for s in server.sensors() if s.type_id == "sensor.other.lane_invasion")
        server.events[reset.frame] = []
        collision.emit(fake_carla.collision(carla, reset.frame))  # the reset teleport's: dropped
        server.events[f] = [
            ("sensor.other.collision", fake_carla.collision(carla, f, "vehicle.audi.tt")),
            ("sensor.other.lane_invasion", fake_carla.lane_invasion(
                carla, f, carla.LaneMarkingType.Solid, carla.LaneMarkingType.Broken)),
        ]
        lanes.emit(fake_carla.lane_invasion(carla, f + 1, carla.LaneMarkingType.Solid))  # future
        tick = world.step(NEUTRAL)
        assert tick.frame == f
        assert tick.events == [
            {"type": "collision", "frame": f, "other": "vehicle.audi.tt", "intensity": 5.0,
             "late": False},
            {"type": "lane_invasion", "frame": f, "markings": ["Solid", "Broken"], "late": False},
        ]
        later = world.step(NEUTRAL)
        assert later.events == [{"type": "lane_invasion", "frame": f + 1, "markings": ["Solid"],
                                 "late": False}]
        assert world.step(NEUTRAL).events == []


def test_a_late_event_of_an_earlier_frame_is_still_reported_once(server):
    carla = server.carla
    with make_world(server) as world:
        world.start()
        world.reset(seed=0, options={})
        first = world.step(NEUTRAL)
        collision = next(s for s in server.sensors() if s.type_id == "sensor.other.collision")
        collision.emit(fake_carla.collision(carla, first.frame, impulse=(0.0, 0.0, 2.0)))
        tick = world.step(NEUTRAL)
        assert [(e["frame"], e["intensity"], e["late"]) for e in tick.events] == [
            (first.frame, 2.0, True)]
        assert world.step(NEUTRAL).events == []
        assert world.stats()["late_events"] == 1


def test_event_queue_order_and_floor(carla):
    q = EventQueue(ALL_SENSORS[4])
    for f in (5, 3, 8, 6):
        q.put(fake_carla.collision(carla, f))
    assert q.discard_through(4) == 1  # frame 3: the old episode's, counted as an orphan
    assert [(e.frame, late) for e, late in q.collect(6)] == [(5, True), (6, False)]
    q.put(fake_carla.collision(carla, 2))  # before the floor: never reported, but counted
    assert [(e.frame, late) for e, late in q.collect(10)] == [(8, True)]
    assert q.collect(11) == []
    assert (q.late, q.orphaned) == (2, 2)


def test_collision_with_a_vanished_actor(carla):
    event = fake_carla.Obj(frame=3, other_actor=None, normal_impulse=carla.Vector3D(0, 0, 0))
    assert to_event(ALL_SENSORS[4], event)["other"] == "unknown"


# -- measurements --------------------------------------------------------------------------------

def test_measurements_follow_the_lane(server):
    carla = server.carla
    with make_world(server) as world:
        world.start()
        tick = world.reset(seed=0, options={"spawn_point": 2, "route_length": 10.0})
        m = tick.measurements
        assert m["location"].tolist() == [20.0, 0.0, 0.5] and m["lateral_offset"] == 0.0
        assert m["off_road"] is False and m["speed"] == 0.0
        for _ in range(10):
            m = world.step(VehicleControl(throttle=1.0)).measurements  # 10 m/s for 0.05 s
        assert m["route_distance"] == pytest.approx(5.0)
        assert m["route_completion"] == pytest.approx(0.5)
        assert m["speed"] == pytest.approx(10.0) and m["velocity"].tolist() == [10.0, 0.0, 0.0]
        for field in MEASUREMENT_SPEC:
            field.validate(m[field.name])

        ego = server.vehicles()[0]
        # 1 m right of the centre (CARLA: +y is right at yaw 0), turned 30 degrees to the left
        ego.transform = carla.Transform(carla.Location(x=40.0, y=1.0, z=0.5),
                                        carla.Rotation(yaw=-30.0))
        m = world.step(NEUTRAL).measurements
        assert m["lateral_offset"] == pytest.approx(1.0)
        assert m["heading_error"] == pytest.approx(np.radians(-30.0))
        assert m["off_road"] is False
        ego.transform = carla.Transform(carla.Location(x=40.0, y=-3.0, z=0.5),
                                        carla.Rotation(yaw=190.0))
        m = world.step(NEUTRAL).measurements
        assert m["lateral_offset"] == pytest.approx(-3.0) and m["off_road"] is True
        assert m["yaw"] == pytest.approx(-170.0)
        assert m["heading_error"] == pytest.approx(np.radians(-170.0))
        lookups = server.calls_named("get_waypoint")[-2:]
        assert lookups == [("get_waypoint", True, carla.LaneType.Driving),
                           ("get_waypoint", False, carla.LaneType.Driving)]


def test_route_distance_goes_negative_in_reverse(server):
    with make_world(server) as world:
        world.start()
        world.reset(seed=0, options={})
        for _ in range(4):
            m = world.step(VehicleControl(throttle=1.0, reverse=True)).measurements
        assert m["route_distance"] == pytest.approx(-2.0)
        assert m["route_completion"] == pytest.approx(-2.0 / DEFAULT_ROUTE_LENGTH)


def test_lane_axes_match_carlas_transform_vectors(carla):
    for pitch, yaw in ((0, 0), (0, 90), (10, 30), (-5, 200), (3, -135)):
        t = carla.Transform(carla.Location(), carla.Rotation(pitch=pitch, yaw=yaw, roll=0))
        forward, right = lane_axes(yaw, pitch)
        f, r = t.get_forward_vector(), t.get_right_vector()
        assert forward == pytest.approx((f.x, f.y, f.z), abs=1e-6)
        assert right == pytest.approx((r.x, r.y), abs=1e-6)


def test_wrap_degrees():
    assert [wrap_degrees(a) for a in (0, 180, -180, 190, -190, 540, 359.5)] == [
        0, -180, -180, -170, 170, -180, -0.5]


# -- sensors' blueprints and conversions ---------------------------------------------------------

def test_blueprint_attributes_align_sensors_with_the_tick(server):
    camera = blueprint_attributes(ALL_SENSORS[0], 0.05)
    assert camera == {"image_size_x": "8", "image_size_y": "6", "fov": "90.0", "sensor_tick": "0.0"}
    lidar = blueprint_attributes(ALL_SENSORS[3], 0.05)
    assert lidar["rotation_frequency"] == "20.0", "one full sweep per tick"
    assert lidar["channels"] == "16" and lidar["sensor_tick"] == "0.0"
    assert blueprint_attributes(ALL_SENSORS[4], 0.05) == {}
    odd = parse_sensors([{"name": "cam", "type": "sensor.camera.rgb", "sensor_tick": 0.03}])[0]
    with pytest.raises(CarlaSetupError, match="sensor_tick"):
        blueprint_attributes(odd, 0.05)
    with make_world(server) as world:
        world.start()
        spawned = {a.type_id: a for a in server.sensors()}
        assert spawned["sensor.camera.rgb"].attributes["image_size_x"] == "8"
        assert spawned["sensor.lidar.ray_cast"].attributes["rotation_frequency"] == "20.0"
        camera_place = next(c for c in server.calls_named("spawn_actor")
                            if c[1] == "sensor.camera.rgb")[2]
        assert camera_place.location.x == -5.5 and camera_place.rotation.pitch == -15.0
        assert server.vehicles()[0].attributes["role_name"] == "hero"


def test_conversions_copy_and_decode():
    config = ALL_SENSORS[0]
    bgra = np.zeros((H, W, 4), dtype=np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2] = 1, 2, 3  # B, G, R
    data = fake_carla.image(1, W, H, bgra)
    rgb = to_observation(config, data)
    data.raw_data[:] = bytes(len(data.raw_data))  # CARLA reuses the buffer: the copy must survive
    assert (rgb[..., 2] == 3).all()
    data = fake_carla.image(1, W, H, bgra)
    depth = to_observation(ALL_SENSORS[1], data)
    assert depth[0, 0] == pytest.approx((3 + 2 * 256 + 1 * 65536) / 16777215 * 1000, rel=1e-6)
    semantic = to_observation(ALL_SENSORS[2], data)
    assert semantic.flags.c_contiguous and (semantic == 3).all()
    with pytest.raises(CarlaSetupError, match="4x6"):
        to_observation(config, fake_carla.image(1, 4, 6))
    far = np.full((H, W, 4), 255, dtype=np.uint8)
    assert to_observation(ALL_SENSORS[1], fake_carla.image(1, W, H, far)).max() == 1000.0
    points = fake_carla.lidar(1, np.arange(12).reshape(3, 4))
    limited = parse_sensors([{"name": "l", "type": "sensor.lidar.ray_cast", "max_points": 2}])[0]
    assert to_observation(ALL_SENSORS[3], points).tolist()[2] == [8, 9, 10, 11]
    assert to_observation(limited, points).shape == (2, 4)


def test_vehicle_control_is_clipped(carla):
    control = carla_api.vehicle_control(carla, 1.5, -2.0, -0.1, 1, 0)
    assert (control.throttle, control.steer, control.brake, control.hand_brake,
            control.reverse) == (1.0, -1.0, 0.0, True, False)


# -- the real carla client ----------------------------------------------------------------------

def test_real_client_without_a_server_fails_fast_and_clearly(carla):
    port = free_port()
    world = CarlaWorld(host="127.0.0.1", port=port, timeout=2.0, sensors=default_sensors())
    started = time.monotonic()
    with pytest.raises(CarlaConnectionError) as info:
        world.start()
    elapsed = time.monotonic() - started
    assert elapsed < 2.0 + 3.0, "took %.1f s" % elapsed
    message = str(info.value)
    assert "127.0.0.1:%d" % port in message and "CarlaUE4.sh" in message
    assert "-carla-rpc-port=%d" % port in message
    world.close()


@pytest.mark.carla_server
def test_against_a_real_server(carla):
    """Runs only where a CARLA server answers at $CARLA_HOST:$CARLA_PORT (default localhost:2000)."""
    host = os.environ.get("CARLA_HOST", "localhost")
    port = int(os.environ.get("CARLA_PORT", "2000"))
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError as e:
        pytest.skip("no CARLA server at {}:{} ({}); start one with `./CarlaUE4.sh "
                    "-RenderOffScreen -carla-rpc-port={}`".format(host, port, e, port))
    client = carla.Client(host, port)
    client.set_timeout(20.0)
    before = client.get_world().get_settings()
    with CarlaWorld(host=host, port=port, timeout=20.0) as world:
        world.start()
        first = world.reset(seed=0, options={})
        for i in range(20):
            tick = world.step(VehicleControl(throttle=0.5))
            assert tick.frame == first.frame + i + 1
            assert all(e["frame"] <= tick.frame for e in tick.events)
        assert tick.measurements["speed"] > 0
        ours = world.actor_ids
        assert len(ours) == 1 + len(world.sensors)
    after = client.get_world().get_settings()
    assert (after.synchronous_mode, after.fixed_delta_seconds) == (
        before.synchronous_mode, before.fixed_delta_seconds)
    if not after.synchronous_mode:
        client.get_world().wait_for_tick(20.0)
    assert len(client.get_world().get_actors(ours)) == 0


# -- the whole way through the bridge ------------------------------------------------------------

class TestCarlaWorldThroughTheBridge(WorldServerCompliance):
    """The compliance suite, over the real bridge, with CarlaWorld on the fake server."""

    @pytest.fixture
    def endpoint(self, carla, tcp_endpoint):
        with carla_world_served(carla, tcp_endpoint) as (_, bridge):
            yield bridge.endpoint


def test_a_trainer_that_dies_gets_the_carla_world_restored_and_a_successor_is_served(
        carla, tcp_endpoint, sim_process):
    """kill -9 of the trainer process: no close, no goodbye. The server notices the missing
    heartbeats, restores the settings and destroys its actors, then serves the next trainer."""
    with carla_world_served(carla, tcp_endpoint) as (server, bridge):
        trainer = sim_process(["-m", "tests.peers.stepping_client", "--connect", bridge.endpoint,
                               "--heartbeat", "0.1"], python=sys.executable, name="trainer")
        deadline = time.monotonic() + 30
        while not server.settings.synchronous_mode and time.monotonic() < deadline:
            time.sleep(0.02)  # polling the fake server's recorded state, not a socket
        assert server.settings.synchronous_mode is True, "the trainer never started a session"
        assert server.actors, "no ego or sensors were spawned"
        os.killpg(trainer.proc.pid, signal.SIGKILL)  # no close, no goodbye
        deadline = time.monotonic() + 5
        while bridge.session is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bridge.session is None, "the server kept the dead trainer's session"
        assert_restored(server)
        with BridgeClient(bridge.endpoint, timeout=10.0) as successor:
            successor.hello()
            first = successor.reset(seed=1)
            assert successor.step({"throttle": 0.2, "steer": 0.0, "brake": 0.0,
                                   "hand_brake": False, "reverse": False}).frame == first.frame + 1
            assert server.settings.synchronous_mode is True
