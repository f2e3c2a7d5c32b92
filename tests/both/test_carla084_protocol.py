"""CARLA 0.8.4 protocol pieces: message layout, framing, the settings file, sensor payloads."""
import socket
import struct
import threading

import numpy as np
import pytest

from bridge.errors import BridgeError, BridgeTimeoutError, SpecError
from carla_client.carla084 import schema
from carla_client.carla084.episode import read_settings
from carla_client.carla084.errors import (LegacyConnectionError, LegacyProtocolError,
                                          LegacyTimeoutError)
from carla_client.carla084.framing import FramedSocket
from carla_client.carla084.ini import LevelSettings, ParsedIni, build_ini
from carla_client.carla084.payloads import (decode_camera, decode_lidar, depth_metres,
                                            depth_to_bgra, encode_camera, encode_lidar)
from carla_client.sensors import parse_sensors


# -- messages: field numbers and types as the protocol fixes them ---------------------------------

def test_sensor_id_is_fixed32_and_type_an_enum():
    data = schema.Sensor(id=0xDEADBEEF, type=schema.SENSOR_LIDAR, name="x").SerializeToString()
    # field 1 wire type 5 (fixed32, 4 bytes little-endian), field 2 varint, field 3 length-delimited
    assert data == b"\x0d\xef\xbe\xad\xde" + b"\x10\x02" + b"\x1a\x01x"


def test_control_and_episode_messages_field_numbers():
    control = schema.Control(steer=0.5, throttle=1.0, brake=0.25, hand_brake=True, reverse=True)
    data = control.SerializeToString()
    assert data == (b"\x0d" + struct.pack("<f", 0.5) + b"\x15" + struct.pack("<f", 1.0)
                    + b"\x1d" + struct.pack("<f", 0.25) + b"\x20\x01\x28\x01")
    assert schema.EpisodeStart(player_start_spot_index=3).SerializeToString() == b"\x08\x03"
    assert schema.EpisodeReady(ready=True).SerializeToString() == b"\x08\x01"
    assert schema.RequestNewEpisode(ini_file="a").SerializeToString() == b"\x0a\x01a"


def test_measurements_round_trip_with_nested_messages_and_oneof():
    m = schema.Measurements(platform_timestamp=7, game_timestamp=50, frame_number=2 ** 40)
    p = m.player_measurements
    p.transform.CopyFrom(schema.transform((1.0, 2.0, 3.0), (0.0, 90.0, 0.0)))
    p.collision_other, p.intersection_offroad = 12.5, 0.25
    p.autopilot_control.throttle = 0.75
    agent = m.non_player_agents.add(id=9)
    agent.traffic_light.state = 2
    parsed = schema.Measurements()
    parsed.ParseFromString(m.SerializeToString())
    assert parsed.frame_number == 2 ** 40 and parsed.game_timestamp == 50
    assert parsed.player_measurements.transform.rotation.yaw == 90.0
    assert parsed.player_measurements.collision_other == 12.5
    assert parsed.non_player_agents[0].WhichOneof("agent") == "traffic_light"
    # frame_number is field 5, varint
    assert schema.Measurements(frame_number=1).SerializeToString() == b"\x28\x01"


def test_scene_description_repeated_fields():
    scene = schema.SceneDescription(map_name="Town01")
    scene.player_start_spots.add().location.x = 4.0
    scene.sensors.add(id=1, type=schema.SENSOR_CAMERA, name="cam")
    parsed = schema.SceneDescription()
    parsed.ParseFromString(scene.SerializeToString())
    assert parsed.map_name == "Town01" and parsed.player_start_spots[0].location.x == 4.0
    assert [s.name for s in parsed.sensors] == ["cam"]


# -- framing ----------------------------------------------------------------------------------------

@pytest.fixture
def pair():
    a, b = socket.socketpair()
    left, right = FramedSocket(a, "left"), FramedSocket(b, "right")
    yield left, right
    left.close()
    right.close()


def test_messages_and_the_empty_terminator_cross_intact(pair):
    left, right = pair
    payloads = (b"hello", b"", b"x" * 300000)
    thread = threading.Thread(target=lambda: [left.send(p, 5.0) for p in payloads])
    thread.start()
    assert [right.recv(5.0) for _ in payloads] == list(payloads)
    thread.join(5)


def test_a_message_arriving_in_pieces_is_reassembled(pair):
    left, right = pair
    raw = struct.pack("<L", 6) + b"abcdef"

    def dribble():
        for byte in raw:
            left._sock.sendall(bytes([byte]))

    thread = threading.Thread(target=dribble)
    thread.start()
    assert right.recv(5.0) == b"abcdef"
    thread.join(5)


def test_mixed_sizes_and_batches_cross_intact_through_the_reused_buffer(pair):
    left, right = pair
    rng = np.random.RandomState(0)
    sizes = [0, 1, 3, 4, 70000, 0, 300000] + list(rng.randint(0, 40000, size=60)) + [2 << 20, 5]
    payloads = [bytes(rng.randint(0, 256, size=int(n), dtype=np.uint8)) for n in sizes]
    batches = [payloads[i:i + 7] for i in range(0, len(payloads), 7)]
    thread = threading.Thread(target=lambda: [left.send_many(b, 5.0) for b in batches])
    thread.start()
    received = []
    while len(received) < len(payloads):
        message = right.poll() if len(received) % 3 else right.recv(5.0)
        if message is not None:
            received.append(message)
    thread.join(5)
    assert received == payloads
    assert right.poll() is None


def test_a_write_the_peer_never_reads_times_out(pair):
    left, _ = pair
    with pytest.raises(LegacyTimeoutError, match="stopped reading"):
        left.send(b"x" * (16 << 20), 0.2)


def test_timeout_close_and_oversize_are_typed_errors(pair):
    left, right = pair
    with pytest.raises(LegacyTimeoutError) as info:
        right.recv(0.05)
    assert isinstance(info.value, BridgeTimeoutError)
    assert right.poll() is None
    left._sock.sendall(struct.pack("<L", right.max_message + 1))
    with pytest.raises(LegacyProtocolError):
        right.recv(1.0)
    assert right.closed
    left.close()
    a, b = socket.socketpair()
    with FramedSocket(a, "a") as sender, FramedSocket(b, "b") as receiver:
        sender.close()
        with pytest.raises(LegacyConnectionError) as info:
            receiver.recv(1.0)
        assert isinstance(info.value, (ConnectionError, BridgeError))


def test_connect_to_a_closed_port_names_it():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(LegacyConnectionError, match=str(port)):
        FramedSocket.connect("127.0.0.1", port, "world", 1.0, attempts=2, retry_delay=0.01)


# -- the settings file --------------------------------------------------------------------------------

SENSORS = parse_sensors([
    {"name": "rgb", "type": "sensor.camera.rgb", "width": 84, "height": 60, "fov": 100,
     "x": -5.5, "z": 2.8, "pitch": -15},
    {"name": "depth", "type": "sensor.camera.depth", "width": 32, "height": 24, "z": 1.5},
    {"name": "seg", "type": "sensor.camera.semantic_segmentation", "width": 32, "height": 24,
     "z": 1.5, "yaw": 30},
    {"name": "lidar", "type": "sensor.lidar.ray_cast", "channels": 16, "range": 40},
    {"name": "collision", "type": "sensor.other.collision"},
])


def test_settings_file_carries_every_sensor_and_level_setting():
    text = build_ini(SENSORS, LevelSettings(weather=3, vehicles=5, pedestrians=2, seed_vehicles=11))
    ini = ParsedIni(text)
    assert ini.get("CARLA/Server", "SynchronousMode", None) == "True"
    assert ini.get("CARLA/LevelSettings", "WeatherId", None, int) == 3
    assert ini.get("CARLA/LevelSettings", "SeedVehicles", None, int) == 11
    sensors = {s.name: s for s in ini.sensors()}
    assert list(sensors) == ["rgb", "depth", "seg", "lidar"]  # events come from measurements
    rgb = sensors["rgb"]
    assert rgb.get("PostProcessing", None) == "SceneFinal" and rgb.get("FOV", 0, float) == 100
    assert (rgb.get("ImageSizeX", 0, int), rgb.get("ImageSizeY", 0, int)) == (84, 60)
    assert rgb.get("PositionX", 0, float) == -5.5 and rgb.get("RotationPitch", 0, float) == -15
    assert sensors["depth"].get("PostProcessing", None) == "Depth"
    assert sensors["seg"].get("PostProcessing", None) == "SemanticSegmentation"
    assert sensors["lidar"].get("SensorType", None) == "LIDAR_RAY_CAST"
    assert sensors["lidar"].get("Channels", 0, int) == 16


def test_names_that_0_8_4_cannot_carry_are_refused():
    with pytest.raises(SpecError, match="cannot contain"):
        build_ini(parse_sensors([{"name": "a/b", "type": "sensor.camera.rgb"}]), LevelSettings())


def test_server_reads_case_insensitively_and_variants_inherit():
    text = ("[carla/server]\nsynchronousmode=FALSE\n[CARLA/Sensor]\nSensors=Cam,Cam/Depth,Lid\n"
            "[CARLA/Sensor/Cam]\nSensorType=CAMERA\nImageSizeX=40\nImageSizeY=30\nPositionZ=2\n"
            "[CARLA/Sensor/Cam/Depth]\nPostProcessing=Depth\n"
            "[CARLA/Sensor/Lid]\nSensorType=LIDAR_RAY_CAST\n")
    settings = read_settings(text)
    assert not settings.synchronous
    cameras = {s.name: (image_type, c) for s, image_type, c in settings.cameras}
    assert cameras["Cam"][0] == 1 and cameras["Cam/Depth"][0] == 2
    depth = cameras["Cam/Depth"][1]
    assert depth.type == "sensor.camera.depth" and depth.attr("width", 0) == 40 and depth.z == 2.0
    assert [s.name for s, _ in settings.refused] == ["Lid"]


def test_camera_defaults_are_0_8_4s_and_bad_values_are_spec_errors():
    settings = read_settings("[CARLA/Sensor]\nSensors=C\n[CARLA/Sensor/C]\nSensorType=CAMERA\n")
    config = settings.cameras[0][2]
    assert (config.attr("width", 0), config.attr("height", 0), config.attr("fov", 0)) == (720, 512,
                                                                                          90.0)
    assert settings.synchronous  # SynchronousMode defaults to true
    with pytest.raises(SpecError, match="ImageSizeX"):
        read_settings("[CARLA/Sensor]\nSensors=C\n[CARLA/Sensor/C]\nSensorType=CAMERA\n"
                      "ImageSizeX=wide\n")


# -- sensor payloads ---------------------------------------------------------------------------------

def test_camera_payload_layout_and_round_trip():
    image = np.arange(3 * 5 * 4, dtype=np.uint8).reshape(3, 5, 4)
    message = encode_camera(0xABCDEF01, 2 ** 33, 1, 90.0, image)
    assert struct.unpack("<LQLLLf", message[:28]) == (0xABCDEF01, 2 ** 33, 5, 3, 1, 90.0)
    decoded = decode_camera(message)
    assert decoded.frame == 2 ** 33 and decoded.image_type == 1
    assert np.array_equal(decoded.bgra, image)
    with pytest.raises(LegacyProtocolError, match="BGRA"):
        decode_camera(message[:-1])


def test_lidar_payload_layout_keeps_16_bits_of_the_frame():
    points = np.arange(12, dtype=np.float32).reshape(4, 3)
    message = encode_lidar(5, 0x12345, 33.0, np.array([3, 1]), points)
    assert struct.unpack("<LQfL", message[:20]) == (5, 0x2345, 33.0, 2)
    scan = decode_lidar(message)
    assert list(scan.points_per_channel) == [3, 1] and np.array_equal(scan.points, points)
    with pytest.raises(LegacyProtocolError):
        decode_lidar(message[:-4])


def test_depth_encoding_round_trips_to_the_24_bit_step():
    metres = np.array([[0.0, 0.5, 12.345], [999.9, 1000.0, 2000.0]], dtype=np.float32)
    bgra = depth_to_bgra(metres)
    assert bgra.shape == (2, 3, 4) and (bgra[..., 3] == 255).all()
    back = depth_metres(bgra)
    assert np.allclose(back, np.minimum(metres, 1000.0), atol=1000.0 / 2 ** 24 + 1e-4)
    # R is the least significant byte: code 1 in R is one step
    one = np.array([[[0, 0, 1, 255]]], dtype=np.uint8)
    assert depth_metres(one)[0, 0] == pytest.approx(1000.0 / (2 ** 24 - 1))
