"""What the CARLA backend's tests share: the real ``carla`` module (or why it is missing), the sensor
set, a CarlaWorld on a fake server, and the "world restored" check. Python 3.7 syntax and no trainer
packages: tests/carla/ also runs under .venvs/sim-3.7 with carla 0.9.15."""
import contextlib
import os
import threading

import pytest

from bridge.server import BridgeServer
from bridge.schema import VehicleControl
from carla_client.carla_backend import CarlaWorld
from carla_client.sensors import default_sensors, parse_sensors
from carla_client.serve import WorldSessionHandler
from tests import fake_carla

try:
    import carla as REAL_CARLA
    CARLA_MISSING = ""
except ImportError as e:
    REAL_CARLA = None
    CARLA_MISSING = str(e)

W, H = 8, 6
ALL_SENSORS = parse_sensors([
    {"name": "camera", "type": "sensor.camera.rgb", "view": "chase", "width": W, "height": H},
    {"name": "depth", "type": "sensor.camera.depth", "width": W, "height": H},
    {"name": "semantic", "type": "sensor.camera.semantic_segmentation", "width": W, "height": H},
    {"name": "lidar", "type": "sensor.lidar.ray_cast", "z": 2.4, "channels": 16},
    {"name": "collision", "type": "sensor.other.collision"},
    {"name": "lane_invasion", "type": "sensor.other.lane_invasion"},
])
NEUTRAL = VehicleControl()


def require_carla():
    """The real carla module; skips (or fails under CI=true) without it."""
    if REAL_CARLA is None:
        reason = ("the carla package is not importable ({}); `pip install carla==0.9.16` on Python "
                  "3.10-3.12 or `carla==0.9.15` on 3.7 to run the CARLA backend tests".format(
                      CARLA_MISSING))
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: a failure, not a skip)", pytrace=False)
        pytest.skip(reason)
    return REAL_CARLA


def make_world(server, sensors=ALL_SENSORS, timeout=2.0, **kwargs):
    return CarlaWorld(sensors=sensors, carla_module=server.module, timeout=timeout, **kwargs)


def assert_restored(server):
    """The world is exactly as it was before start, and nothing we spawned is left."""
    assert fake_carla.settings_equal(server.settings, server.original_settings)
    assert not server.actors, "actors left alive: %s" % server.alive()
    assert all(not on for on in server.tm_sync.values())


@contextlib.contextmanager
def carla_world_served(carla, endpoint, server=None, sensors=None, timeout=5.0):
    """CarlaWorld on a fake server behind a real BridgeServer in a thread; yields (fake, bridge).

    On exit the bridge is closed and the fake server must be exactly as before (settings, actors).
    """
    server = server or fake_carla.FakeServer(carla, spawn_point_count=4)
    backend = CarlaWorld(sensors=sensors or default_sensors(16, 16), carla_module=server.module,
                         timeout=timeout)
    stop = threading.Event()
    with backend, BridgeServer(WorldSessionHandler(backend), bind=endpoint,
                               use_shm=False) as bridge:
        thread = threading.Thread(target=bridge.serve, kwargs={"should_stop": stop.is_set},
                                  daemon=True)
        thread.start()
        try:
            yield server, bridge
        finally:
            stop.set()
            thread.join(10.0)
    assert not thread.is_alive()
    assert_restored(server)
