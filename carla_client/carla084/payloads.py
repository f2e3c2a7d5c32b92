"""Sensor payloads of the 0.8.4 stream port (not protobuf), and their conversion to our arrays.

Every sensor message is a uint32 sensor id, then:
- camera: uint64 frame, uint32 width, uint32 height, uint32 image type, float32 FOV, then
  width x height BGRA pixels;
- LiDAR: uint64 frame (low 16 bits only on a real 0.8.4 server), float32 horizontal angle, uint32
  channel count, that many uint32 point counts, then float32 (x, y, z) points.
All little-endian.
"""
import struct
from typing import NamedTuple

import numpy as np

from carla_client.carla084.errors import LegacyProtocolError

SENSOR_ID = struct.Struct("<L")
CAMERA_HEADER = struct.Struct("<QLLLf")   # 24 bytes
LIDAR_HEADER = struct.Struct("<QfL")      # 16 bytes
#: 0.8.4 encodes depth in 24 bits over R, G, B, scaled to 1000 m.
DEPTH_SCALE = 1000.0 / (2 ** 24 - 1)


class CameraImage(NamedTuple):
    frame: int
    width: int
    height: int
    image_type: int
    fov: float
    bgra: np.ndarray  # (height, width, 4) uint8


class LidarScan(NamedTuple):
    frame: int
    horizontal_angle: float
    points_per_channel: np.ndarray  # uint32 (channels,)
    points: np.ndarray              # float32 (n, 3)


def encode_camera(sensor_id: int, frame: int, image_type: int, fov: float, bgra: np.ndarray
                  ) -> bytes:
    """One camera message body (the length prefix is the framing's)."""
    height, width = bgra.shape[:2]
    pixels = memoryview(np.ascontiguousarray(bgra, dtype=np.uint8)).cast("B")
    return b"".join((SENSOR_ID.pack(sensor_id),
                     CAMERA_HEADER.pack(frame, width, height, image_type, fov), pixels))


def encode_lidar(sensor_id: int, frame: int, horizontal_angle: float,
                 points_per_channel: np.ndarray, points: np.ndarray) -> bytes:
    counts = np.asarray(points_per_channel, dtype="<u4")
    return (SENSOR_ID.pack(sensor_id)
            + LIDAR_HEADER.pack(frame & 0xFFFF, horizontal_angle, len(counts)) + counts.tobytes()
            + np.ascontiguousarray(points, dtype="<f4").tobytes())


def sensor_id_of(message: bytes) -> int:
    if len(message) < 4:
        raise LegacyProtocolError("a sensor message of {} bytes has no sensor id".format(
            len(message)))
    return SENSOR_ID.unpack_from(message)[0]


def decode_camera(message: bytes) -> CameraImage:
    """Parses a camera message (id included). Raises LegacyProtocolError on a size mismatch."""
    if len(message) < 4 + CAMERA_HEADER.size:
        raise LegacyProtocolError("camera message of {} bytes is shorter than its header".format(
            len(message)))
    frame, width, height, image_type, fov = CAMERA_HEADER.unpack_from(message, 4)
    start = 4 + CAMERA_HEADER.size
    if len(message) - start != width * height * 4:
        raise LegacyProtocolError("camera message: {}x{} BGRA needs {} bytes, got {}".format(
            width, height, width * height * 4, len(message) - start))
    pixels = np.frombuffer(message, dtype=np.uint8, offset=start).reshape(height, width, 4)
    return CameraImage(frame, width, height, image_type, fov, pixels)


def decode_lidar(message: bytes) -> LidarScan:
    if len(message) < 4 + LIDAR_HEADER.size:
        raise LegacyProtocolError("LiDAR message of {} bytes is shorter than its header".format(
            len(message)))
    frame, angle, channels = LIDAR_HEADER.unpack_from(message, 4)
    start = 4 + LIDAR_HEADER.size
    points_start = start + 4 * channels
    if points_start > len(message) or (len(message) - points_start) % 12:
        raise LegacyProtocolError("LiDAR message: {} bytes do not hold {} channel counts and whole "
                                  "points".format(len(message), channels))
    counts = np.frombuffer(message, dtype="<u4", count=channels, offset=start)
    points = np.frombuffer(message, dtype="<f4", offset=points_start).reshape(-1, 3)
    return LidarScan(frame, angle, counts, points)


# -- to our observation arrays ------------------------------------------------------------------

def depth_metres(bgra: np.ndarray) -> np.ndarray:
    """0.8.4's depth encoding (R least significant, then G, B) to float32 metres."""
    pixels = bgra.astype(np.uint32)
    code = pixels[..., 2] + pixels[..., 1] * 256 + pixels[..., 0] * 65536
    return (code * DEPTH_SCALE).astype(np.float32)


def depth_to_bgra(metres: np.ndarray) -> np.ndarray:
    """The inverse, for the server: metres (clipped to [0, 1000]) to BGRA with alpha 255."""
    code = np.round(np.clip(metres, 0.0, 1000.0) / DEPTH_SCALE).astype(np.uint32)
    out = np.empty(metres.shape + (4,), dtype=np.uint8)
    out[..., 2] = code & 0xFF
    out[..., 1] = (code >> 8) & 0xFF
    out[..., 0] = (code >> 16) & 0xFF
    out[..., 3] = 255
    return out


def labels_to_bgra(tags: np.ndarray) -> np.ndarray:
    """Semantic tags into the red channel, as 0.8.4 sends them."""
    out = np.zeros(tags.shape + (4,), dtype=np.uint8)
    out[..., 2] = tags
    out[..., 3] = 255
    return out
