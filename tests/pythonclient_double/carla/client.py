"""``carla.client`` double: make_carla_client and CarlaClient with the 0.8.4 PythonClient's calls.

Plain blocking sockets with one timeout each, like the original; the protobuf messages come from
carla_client.carla084.schema (the original ships a generated carla_server_pb2 module instead).
"""
import socket
import struct
from contextlib import contextmanager

import numpy as np

from carla import sensor
from carla.tcp import TCPConnectionError
from carla_client.carla084 import schema as carla_protocol

VehicleControl = carla_protocol.Control
IMAGE_TYPES = ("None", "SceneFinal", "Depth", "SemanticSegmentation")


class _TCP(object):
    def __init__(self, host, port, timeout):
        self.host, self.port, self.timeout, self.sock = host, port, timeout, None

    def _fail(self, what, error):
        raise TCPConnectionError("(%s:%s) %s: %s" % (self.host, self.port, what, error))

    def connect(self, attempts=10):
        import time
        error = None
        for attempt in range(attempts):
            try:
                self.sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
                self.sock.settimeout(self.timeout)
                return
            except socket.error as e:
                error = e
                time.sleep(0.2)
        self._fail("failed to connect", error)

    def disconnect(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def write(self, message):
        if self.sock is None:
            self._fail("write", "not connected")
        try:
            self.sock.sendall(struct.pack("<L", len(message)) + message)
        except socket.error as e:
            self._fail("failed to write data", e)

    def _read_n(self, n):
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except socket.timeout as e:
                self._fail("failed to read data", "timed out")
            except socket.error as e:
                self._fail("failed to read data", e)
            if not chunk:
                self._fail("read", "connection closed")
            data += chunk
        return data

    def read(self):
        if self.sock is None:
            self._fail("read", "not connected")
        return self._read_n(struct.unpack("<L", self._read_n(4))[0])


@contextmanager
def make_carla_client(host, world_port, timeout=15):
    client = CarlaClient(host, world_port, timeout)
    try:
        client.connect()
        yield client
    finally:
        client.disconnect()


class CarlaClient(object):
    def __init__(self, host, world_port, timeout=15):
        self._world = _TCP(host, world_port, timeout)
        self._stream = _TCP(host, world_port + 1, timeout)
        self._control = _TCP(host, world_port + 2, timeout)
        self._settings = None
        self._requested = False
        self._sensors = {}

    def connect(self, connection_attempts=10):
        self._world.connect(connection_attempts)

    def disconnect(self):
        for tcp in (self._control, self._stream, self._world):
            tcp.disconnect()

    def load_settings(self, carla_settings):
        self._settings = carla_settings
        self._stream.disconnect()
        self._control.disconnect()
        self._world.write(carla_protocol.RequestNewEpisode(ini_file=str(carla_settings))
                          .SerializeToString())
        scene = carla_protocol.SceneDescription()
        scene.ParseFromString(self._world.read())
        self._sensors = {s.id: s for s in scene.sensors}
        self._requested = True
        return scene

    def start_episode(self, player_start_index):
        if self._settings is None:
            raise RuntimeError("no settings loaded, cannot start episode")
        if not self._requested:
            self.load_settings(self._settings)
        try:
            self._world.write(carla_protocol.EpisodeStart(
                player_start_spot_index=player_start_index).SerializeToString())
            ready = carla_protocol.EpisodeReady()
            ready.ParseFromString(self._world.read())
            if not ready.ready:
                raise RuntimeError("cannot start episode: server failed to start episode")
            self._stream.connect()
            self._control.connect()
        finally:
            self._requested = False

    def read_data(self):
        measurements = carla_protocol.Measurements()
        measurements.ParseFromString(self._stream.read())
        data = {}
        while True:
            message = self._stream.read()
            if not message:
                break
            definition = self._sensors[struct.unpack("<L", message[:4])[0]]
            data[definition.name] = self._parse(definition, message[4:])
        return measurements, data

    @staticmethod
    def _parse(definition, body):
        if definition.type == carla_protocol.SENSOR_CAMERA:
            frame, width, height, kind, fov = struct.unpack("<QLLLf", body[:24])
            name = IMAGE_TYPES[kind] if kind < len(IMAGE_TYPES) else "Unknown"
            return sensor.Image(frame, width, height, name, fov, body[24:])
        frame, angle, channels = struct.unpack("<QfL", body[:16])
        counts = np.frombuffer(body[16:16 + 4 * channels], dtype=np.uint32)
        points = np.frombuffer(body[16 + 4 * channels:], dtype=np.float32).reshape(-1, 3)
        return sensor.LidarMeasurement(frame, angle, channels, counts,
                                       sensor.PointCloud(frame, points))

    def send_control(self, *args, **kwargs):
        if args and isinstance(args[0], carla_protocol.Control):
            message = args[0]
        else:
            message = carla_protocol.Control(
                steer=kwargs.get("steer", 0.0), throttle=kwargs.get("throttle", 0.0),
                brake=kwargs.get("brake", 0.0), hand_brake=kwargs.get("hand_brake", False),
                reverse=kwargs.get("reverse", False))
        self._control.write(message.SerializeToString())
