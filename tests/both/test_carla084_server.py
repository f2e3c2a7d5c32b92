"""carla084_server (in a thread) spoken to with our wire client and the Carla084World backend.

The server behaves like a CARLA 0.8.4 server: message sequence, ports open only during an episode,
sensor ids, frame numbers that never restart, synchronous waits and ServerTimeOut; the backend maps
it onto our spec, reports events once, loses an episode after ServerTimeOut and recovers at reset.
"""
import logging
import random
import socket
import threading
import time

import numpy as np
import pytest

from bridge.errors import BridgeTimeoutError, SessionError, SpecError
from bridge.schema import VehicleControl
from carla_client.carla084 import schema
from carla_client.carla084.errors import (EpisodeLostError, EpisodeRefusedError,
                                          LegacyConnectionError, LegacyError, LegacyTimeoutError)
from carla_client.carla084.framing import FramedSocket
from carla_client.carla084.ini import LevelSettings, build_ini
from carla_client.carla084.payloads import decode_camera
from carla_client.carla084.server import Carla084Server
from carla_client.carla084.wire import WireClient
from carla_client.carla084.world import Carla084World
from carla_client.sensors import parse_sensors

SENSORS = parse_sensors([
    {"name": "camera", "type": "sensor.camera.rgb", "width": 32, "height": 24, "view": "chase"},
    {"name": "depth", "type": "sensor.camera.depth", "width": 16, "height": 12, "z": 1.5},
    {"name": "seg", "type": "sensor.camera.semantic_segmentation", "width": 16, "height": 12,
     "z": 1.5},
    {"name": "collision", "type": "sensor.other.collision"},
    {"name": "lane_invasion", "type": "sensor.other.lane_invasion"},
])
LIDAR = parse_sensors([{"name": "lidar", "type": "sensor.lidar.ray_cast"}])
FULL = VehicleControl(throttle=1.0, steer=0.6)


def free_port_block(count=3):
    """A port P with P .. P+count-1 all free a moment ago."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


class ServerThread(object):
    def __init__(self, server_timeout=5.0, port=None):
        self.port = port or free_port_block()
        self.stopped = False
        self.server = Carla084Server(self.port, seed=3, server_timeout=server_timeout,
                                     should_stop=lambda: self.stopped)
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()

    def close(self):
        self.stopped = True
        self.thread.join(10)
        self.server.close()


@pytest.fixture
def server():
    thread = ServerThread()
    yield thread
    thread.close()


@pytest.fixture
def quick_server():
    thread = ServerThread(server_timeout=0.6)
    yield thread
    thread.close()


def connect(server, sensors=SENSORS, level=LevelSettings()):
    client = WireClient("127.0.0.1", server.port, timeout=5.0)
    scene = client.load_settings(build_ini(sensors, level))
    return client, scene


# -- the protocol, seen by a client -----------------------------------------------------------------

def test_scene_description_lists_start_spots_and_cameras_with_arbitrary_ids(server):
    client, scene = connect(server, SENSORS + LIDAR)
    with client:
        assert scene.map_name and len(scene.start_spots) == 20
        assert sorted(scene.sensors) == ["camera", "depth", "seg"]  # no LiDAR: refused
        ids = [s.id for s in scene.sensors.values()]
        assert len(set(ids)) == 3 and ids != [0, 1, 2]
        assert all(s.type == schema.SENSOR_CAMERA for s in scene.sensors.values())
        _, again = client.load_settings(build_ini(SENSORS, LevelSettings())), None
        assert {s.id for s in client._scene.sensors.values()} != set(ids)  # new every episode


def test_stream_and_control_ports_open_only_after_episode_ready(server):
    client, _ = connect(server)
    with client:
        with pytest.raises(LegacyConnectionError):
            FramedSocket.connect("127.0.0.1", server.port + 1, "stream", 1.0)
        client.start_episode(0)
        measurements, sensors = client.read_data(5.0)
        assert sorted(sensors) == ["camera", "depth", "seg"]
        image = decode_camera(sensors["camera"])
        assert (image.width, image.height, image.image_type) == (32, 24, 1)
        assert image.frame == measurements.frame_number
        assert decode_camera(sensors["depth"]).image_type == 2
        assert decode_camera(sensors["seg"]).image_type == 3
        assert measurements.game_timestamp == 50  # the first frame is already one step in


def test_synchronous_mode_waits_for_the_control(server):
    client, _ = connect(server)
    with client:
        client.start_episode(1)
        first, _ = client.read_data(5.0)
        with pytest.raises(LegacyTimeoutError):
            client.read_data(0.5)  # no control sent: no frame
        client.send_control(steer=0.0, throttle=1.0, brake=0.0, hand_brake=False, reverse=False)
        second, _ = client.read_data(5.0)
        assert second.frame_number == first.frame_number + 1
        assert second.game_timestamp == first.game_timestamp + 50


def test_asynchronous_mode_runs_without_controls(server):
    client, _ = connect(server, level=LevelSettings(synchronous=False))
    with client:
        client.start_episode(0)
        frames = [client.read_data(5.0)[0].frame_number for _ in range(4)]
        assert frames == sorted(set(frames))


def test_frame_numbers_never_restart_but_game_time_does(server):
    client, _ = connect(server)
    with client:
        last = 0
        for episode in range(3):
            if episode:
                client.load_settings(build_ini(SENSORS, LevelSettings()))
            client.start_episode(episode)
            for _ in range(3):
                m, _ = client.read_data(5.0)
                assert m.frame_number > last
                last = m.frame_number
                client.send_control(0.0, 0.5, 0.0, False, False)
            assert m.game_timestamp == 150


def test_server_timeout_closes_the_control_connection(quick_server):
    client, _ = connect(quick_server)
    with client:
        client.start_episode(0)
        client.read_data(5.0)
        time.sleep(1.0)  # longer than ServerTimeOut (0.6 s)
        assert client.control_connection_closed()
        with pytest.raises(EpisodeLostError):
            client.send_control(0.0, 0.0, 0.0, False, False)
        client.load_settings(build_ini(SENSORS, LevelSettings()))  # the world connection lives on
        client.start_episode(0)
        client.read_data(5.0)


def test_an_invalid_settings_file_gets_ready_false(server):
    with WireClient("127.0.0.1", server.port, timeout=5.0) as client:
        client.load_settings("[CARLA/Sensor]\nSensors=C\n[CARLA/Sensor/C]\nSensorType=CAMERA\n"
                             "ImageSizeX=wide\n")
        with pytest.raises(EpisodeRefusedError):
            client.start_episode(0)
        client.load_settings(build_ini(SENSORS, LevelSettings()))  # and it serves the next one
        client.start_episode(0)
        client.read_data(5.0)


def test_clients_are_served_one_at_a_time(server):
    first, _ = connect(server)
    second = WireClient("127.0.0.1", server.port, timeout=0.5)
    try:
        with pytest.raises(LegacyTimeoutError):
            second.load_settings(build_ini(SENSORS, LevelSettings()))  # waits in the backlog
    finally:
        second.close()
    first.close()
    with WireClient("127.0.0.1", server.port, timeout=5.0) as third:
        third.load_settings(build_ini(SENSORS, LevelSettings()))


# -- the backend ---------------------------------------------------------------------------------------

def world_for(server, sensors=SENSORS, **kwargs):
    kwargs.setdefault("server_timeout", 5.0)
    return Carla084World(host="127.0.0.1", port=server.port, sensors=sensors,
                         legacy_client="wire", **kwargs)


def test_backend_observations_match_the_spec(server):
    with world_for(server) as world:
        tick = world.reset(seed=1)
        for field in world.spec().observation:
            value = tick.observation[field.name]
            assert value.dtype == np.dtype(field.dtype) and value.shape == field.shape
        for field in world.spec().measurements:
            field.validate(tick.measurements[field.name])
        assert tick.observation["depth"].max() <= 1000.0
        assert set(np.unique(tick.observation["seg"])) <= set(range(13))  # 0.8.4's tags
        following = world.step(VehicleControl(throttle=1.0))
        assert following.frame == tick.frame + 1
        assert following.sim_time == pytest.approx(tick.sim_time + 0.05)


def test_same_seed_same_start_and_observations(server):
    with world_for(server) as world:
        a = world.reset(seed=5)
        a_next = world.step(FULL)
        b = world.reset(seed=5)
        b_next = world.step(FULL)
        assert np.array_equal(a.measurements["location"], b.measurements["location"])
        assert np.array_equal(a_next.observation["camera"], b_next.observation["camera"])
        assert b.frame > a_next.frame


def test_collisions_and_invasions_are_reported_once_each_in_their_frame(server):
    with world_for(server) as world:
        world.reset(seed=1, options={"start_index": 0})
        collisions = invasions = 0
        previous_other = 0.0
        for _ in range(120):
            tick = world.step(FULL)  # full lock: off the road into the barrier
            kinds = [e["type"] for e in tick.events]
            assert kinds.count("collision") <= 1 and kinds.count("lane_invasion") <= 1
            for event in tick.events:
                assert event["frame"] == tick.frame
                if event["type"] == "collision":
                    assert event["other"] == "other" and event["intensity"] > 0
                    collisions += 1
                else:
                    invasions += 1
        assert collisions >= 1 and invasions >= 1


def test_reset_options_are_checked(server):
    with world_for(server) as world:
        with pytest.raises(SpecError, match="unknown reset option"):
            world.reset(seed=1, options={"start_spot": 2})
        with pytest.raises(SpecError, match="start_index"):
            world.reset(seed=1, options={"start_index": 99})
        world.reset(seed=1, options={"start_index": 3})  # reconnected after the refusal


def test_an_idle_trainer_loses_the_episode_and_reset_recovers(quick_server, caplog):
    with world_for(quick_server, server_timeout=0.6) as world:
        first = world.reset(seed=1)
        world.step(FULL)
        time.sleep(1.0)
        with caplog.at_level(logging.WARNING, logger="carla_client.carla084.world"):
            with pytest.raises(EpisodeLostError) as info:
                world.step(FULL)
        assert isinstance(info.value, SessionError)  # the env truncates and reconnects
        assert "ServerTimeOut" in caplog.text and "truncated" in caplog.text
        again = world.reset(seed=1)
        assert again.frame > first.frame + 1
        assert world.step(FULL).frame == again.frame + 1


def test_lidar_on_our_server_is_a_clear_refusal(server):
    with world_for(server, sensors=SENSORS + LIDAR) as world:
        with pytest.raises(EpisodeRefusedError, match="LiDAR"):
            world.reset(seed=1)


def test_a_vanished_server_is_a_typed_error_and_reset_reconnects():
    first = ServerThread()
    port = first.port
    with world_for(first) as world:
        world.reset(seed=1)
        first.close()
        with pytest.raises(LegacyError) as info:
            for _ in range(3):
                world.step(FULL)
        assert isinstance(info.value, (ConnectionError, BridgeTimeoutError))
        second = ServerThread(port=port)
        try:
            tick = world.reset(seed=1)
            assert world.step(FULL).frame == tick.frame + 1
        finally:
            second.close()


def test_no_server_is_a_fast_clear_error():
    world = Carla084World(port=free_port_block(), legacy_client="wire", connect_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(LegacyConnectionError, match="carla084_server"):
        world.reset(seed=1)
    assert time.monotonic() - started < 10


def test_a_stalled_server_is_a_timeout():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        world = Carla084World(port=listener.getsockname()[1], legacy_client="wire",
                              connect_timeout=0.5)
        with pytest.raises(LegacyTimeoutError):
            world.reset(seed=1)
    finally:
        listener.close()


def test_lead_vehicle_from_the_other_agents():
    m = schema.Measurements()
    m.player_measurements.bounding_box.extent.x = 2.0
    for agent_id, (x, y, yaw, speed) in enumerate([(20.0, 0.5, 0.0, 3.0), (10.0, 5.0, 0.0, 1.0),
                                                   (-8.0, 0.0, 0.0, 9.0), (35.0, -0.4, 0.0, 0.0)]):
        vehicle = m.non_player_agents.add(id=agent_id + 1).vehicle
        vehicle.transform.CopyFrom(schema.transform((x, y, 0.0), (0.0, yaw, 0.0)))
        vehicle.forward_speed = speed
        vehicle.bounding_box.extent.x = 2.3
    m.non_player_agents.add(id=9).traffic_light.state = 2
    distance, closing = Carla084World._lead(m, 0.0, 0.0, 0.0, 8.0)
    assert distance == pytest.approx(20.0 - 2.0 - 2.3) and closing == pytest.approx(5.0)
    assert Carla084World._lead(schema.Measurements(), 0.0, 0.0, 0.0, 8.0) == (50.0, 0.0)


def test_other_vehicles_are_sent_when_asked_and_feed_the_lead_measurements(server):
    client, _ = connect(server, level=LevelSettings(vehicles=8, send_non_player_agents=True))
    with client:
        client.start_episode(0)
        m, _ = client.read_data(5.0)
        assert [a.WhichOneof("agent") for a in m.non_player_agents] == ["vehicle"] * 8
        assert len({a.id for a in m.non_player_agents}) == 8
    with world_for(server, vehicles=8) as world:
        tick = world.reset(seed=4)
        assert 0.0 <= tick.measurements["lead_distance"] <= 50.0
    with world_for(server, vehicles=0) as alone:
        tick = alone.reset(seed=4)
        assert (tick.measurements["lead_distance"], tick.measurements["lead_closing_speed"]) == (
            50.0, 0.0)


def test_the_bench_alternates_both_paths_and_reports_medians(capsys):
    import json

    from carla_client import bench

    assert bench.main(["--world", "carla084", "--ticks", "30", "--repeats", "2", "--width",
                       "16", "--height", "12", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["client"] == "wire" and report["camera"] == "16x12 RGB"
    assert len(report["runs"]["builtin"]) == len(report["runs"]["carla084"]) == 2
    assert len(report["ratios"]) == 2 and report["ratio"] > 0
    for path in ("builtin_in_process", "carla084_protocol"):
        assert report[path]["ticks_per_second"] > 0 and report[path]["cpu_us_per_tick"] > 0
    assert report["ratio"] == pytest.approx(report["carla084_protocol"]["ticks_per_second"]
                                            / report["builtin_in_process"]["ticks_per_second"])


def test_an_oversized_control_message_drops_that_client_and_the_server_serves_on(server):
    import struct

    client, _ = connect(server)
    with client:
        client.start_episode(0)
        client.read_data(5.0)
        client._control._sock.sendall(struct.pack("<L", client._control.max_message + 1))
        with pytest.raises(LegacyError):
            client.read_data(5.0)  # the server closed this client's connections
    client, _ = connect(server)
    with client:
        client.start_episode(0)
        measurements, _ = client.read_data(5.0)
        assert measurements.frame_number > 0
    assert server.thread.is_alive()
