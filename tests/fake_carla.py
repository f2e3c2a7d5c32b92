"""A fake CARLA server for tests: Client, World, Map, actors and Traffic Manager recording every call.

The fakes stand in only for what needs a server. Values (WorldSettings, Transform, Location, Rotation,
Vector3D, VehicleControl, LaneType, LaneMarkingType, command.DestroyActor) are the REAL ``carla``
package's, so the backend is exercised against CARLA's own types::

    server = FakeServer(carla)
    world = CarlaWorld(sensors=..., carla_module=server.module)

``server.module`` behaves like the ``carla`` module except that ``Client`` connects to this server.

The world is a straight road along +x: lane centre y = 0, lane width 3.5 m, yaw 0 (so CARLA's right
vector is +y). Spawn points lie on it every 10 m. A vehicle moves at 10 m/s x throttle along its yaw.
Each tick delivers every listening sensor's data for the new frame through its ``listen`` callback,
synchronously by default, or from a thread after ``server.delay`` seconds; ``server.drop`` holds sensor
types whose data is withheld; ``server.events[frame]`` lists (sensor type, event) pairs to emit.
"""
import fnmatch
import math
import threading
import numpy as np

LANE_WIDTH = 3.5

_BLUEPRINT_ATTRIBUTES = {
    "vehicle": ("role_name", "color"),
    "sensor.camera": ("image_size_x", "image_size_y", "fov", "sensor_tick", "role_name"),
    "sensor.lidar": ("channels", "range", "points_per_second", "rotation_frequency", "upper_fov",
                     "lower_fov", "sensor_tick", "role_name"),
    "sensor.other": ("role_name",),
}

BLUEPRINT_IDS = (
    "vehicle.tesla.model3", "vehicle.audi.tt", "sensor.camera.rgb", "sensor.camera.depth",
    "sensor.camera.semantic_segmentation", "sensor.lidar.ray_cast", "sensor.other.collision",
    "sensor.other.lane_invasion",
)


def copy_settings(carla, s):
    """A new carla.WorldSettings equal to ``s`` (WorldSettings cannot be copied or pickled)."""
    copy = carla.WorldSettings()
    for field in ("synchronous_mode", "no_rendering_mode", "fixed_delta_seconds", "substepping",
                  "max_substep_delta_time", "max_substeps", "max_culling_distance",
                  "deterministic_ragdolls", "tile_stream_distance", "actor_active_distance",
                  "spectator_as_ego"):
        setattr(copy, field, getattr(s, field))
    return copy


class Obj(object):
    """A plain record: Obj(frame=3, width=2)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __repr__(self):
        return "Obj(%s)" % ", ".join("%s=%r" % kv for kv in sorted(self.__dict__.items()))


def image(frame, width, height, bgra=None):
    """A fake carla.Image; every byte is ``frame % 256`` unless ``bgra`` (h, w, 4) is given."""
    if bgra is None:
        bgra = np.full((height, width, 4), frame % 256, dtype=np.uint8)
    return Obj(frame=frame, width=width, height=height, raw_data=bytearray(bgra.tobytes()))


def lidar(frame, points):
    return Obj(frame=frame, raw_data=bytearray(np.asarray(points, dtype=np.float32).tobytes()))


class FakeBlueprint(object):
    def __init__(self, blueprint_id):
        self.id = blueprint_id
        family = next(k for k in _BLUEPRINT_ATTRIBUTES if blueprint_id.startswith(k))
        self.known = _BLUEPRINT_ATTRIBUTES[family]
        self.attributes = {}

    def has_attribute(self, key):
        return key in self.known

    def set_attribute(self, key, value):
        assert isinstance(value, str), "carla takes attribute values as strings"
        assert key in self.known, key
        self.attributes[key] = value


class FakeBlueprintLibrary(object):
    def filter(self, pattern):
        return [FakeBlueprint(b) for b in BLUEPRINT_IDS if fnmatch.fnmatch(b, pattern)]

    def find(self, blueprint_id):
        if blueprint_id not in BLUEPRINT_IDS:
            raise IndexError("blueprint %r not found" % blueprint_id)
        return FakeBlueprint(blueprint_id)


class FakeActor(object):
    def __init__(self, server, actor_id, blueprint, transform, parent=None):
        self.server = server
        self.id = actor_id
        self.type_id = blueprint.id
        self.attributes = dict(blueprint.attributes)
        self.parent = parent
        self.transform = transform
        self.velocity = server.carla.Vector3D()
        self.control = server.carla.VehicleControl()
        self.callback = None
        self.alive = True
        self.bounding_box = Obj(extent=server.carla.Vector3D(2.3, 1.0, 0.75))

    def _call(self, name, *args):
        assert self.alive, "call %s on destroyed actor %d" % (name, self.id)
        self.server.calls.append((name, self.id) + args)

    # vehicles
    def get_transform(self):
        return self.transform

    def get_velocity(self):
        return self.velocity

    def get_acceleration(self):
        return self.server.carla.Vector3D(0.0, 0.0, 0.0)

    def set_transform(self, transform):
        self._call("set_transform", transform)
        self.transform = transform

    def set_target_velocity(self, velocity):
        self._call("set_target_velocity", velocity)
        self.velocity = velocity

    def set_target_angular_velocity(self, velocity):
        self._call("set_target_angular_velocity", velocity)

    def apply_control(self, control):
        self._call("apply_control", control)
        self.control = control

    # sensors
    def listen(self, callback):
        self._call("listen")
        self.callback = callback

    def stop(self):
        self._call("stop")
        self.callback = None

    @property
    def is_listening(self):
        return self.callback is not None

    def emit(self, data):
        """Delivers ``data`` to the listen callback now (a test injecting stale or odd data)."""
        if self.callback is not None:
            self.callback(data)

    def measure(self, frame):
        """This sensor's data for ``frame``, as the server would stream it."""
        settings = self.attributes
        if self.type_id.startswith("sensor.camera"):
            return image(frame, int(settings["image_size_x"]), int(settings["image_size_y"]))
        if self.type_id.startswith("sensor.lidar"):
            return lidar(frame, [[frame, 0.0, 0.0, 1.0], [0.0, frame, 0.0, 0.5]])
        return None


class FakeWaypoint(object):
    def __init__(self, carla, x):
        self.carla = carla
        self.transform = carla.Transform(carla.Location(x=x, y=0.0, z=0.0),
                                         carla.Rotation(pitch=0.0, yaw=0.0, roll=0.0))
        self.lane_width = LANE_WIDTH

    def next(self, distance):
        return [FakeWaypoint(self.carla, self.transform.location.x + distance)]

    def previous(self, distance):
        return [FakeWaypoint(self.carla, self.transform.location.x - distance)]


class FakeActorList(list):
    def filter(self, pattern):
        return FakeActorList(a for a in self if fnmatch.fnmatch(a.type_id, pattern))


class FakeMap(object):
    def __init__(self, server, name):
        self.server = server
        self.name = name

    def get_spawn_points(self):
        carla = self.server.carla
        return [carla.Transform(carla.Location(x=10.0 * i, y=0.0, z=0.5),
                                carla.Rotation(pitch=0.0, yaw=0.0, roll=0.0))
                for i in range(self.server.spawn_point_count)]

    def get_waypoint(self, location, project_to_road=True, lane_type=None):
        self.server.calls.append(("get_waypoint", project_to_road, lane_type))
        if not project_to_road and abs(location.y) > LANE_WIDTH / 2:
            return None
        return FakeWaypoint(self.server.carla, location.x)


class FakeWorld(object):
    def __init__(self, server):
        self.server = server

    def get_settings(self):
        return copy_settings(self.server.carla, self.server.settings)

    def apply_settings(self, settings, seconds=0.0):
        copy = copy_settings(self.server.carla, settings)
        self.server.calls.append(("apply_settings", copy))
        self.server.settings = copy
        return self.server.frame

    def get_map(self):
        return FakeMap(self.server, self.server.map_name)

    def get_blueprint_library(self):
        return FakeBlueprintLibrary()

    def try_spawn_actor(self, blueprint, transform, attach_to=None):
        server = self.server
        server.calls.append(("try_spawn_actor", blueprint.id, transform))
        if any(abs(transform.location.x - x) < 1e-6 for x in server.occupied_x):
            return None
        return server.add_actor(blueprint, transform, attach_to)

    def spawn_actor(self, blueprint, transform, attach_to=None):
        server = self.server
        server.calls.append(("spawn_actor", blueprint.id, transform))
        if blueprint.id in server.fail_spawn:
            raise RuntimeError("Spawn failed because of collision at spawn position")
        return server.add_actor(blueprint, transform, attach_to)

    def get_actors(self):
        self.server.calls.append(("get_actors",))
        return FakeActorList(self.server.actors.values())

    def get_snapshot(self):
        return Obj(frame=self.server.frame,
                   timestamp=Obj(frame=self.server.frame, elapsed_seconds=self.server.elapsed))

    def tick(self, seconds=0.0):
        return self.server.tick(seconds)


class FakeTrafficManager(object):
    def __init__(self, server, port):
        self.server = server
        self.port = port

    def set_synchronous_mode(self, mode):
        self.server.calls.append(("tm.set_synchronous_mode", self.port, bool(mode)))
        self.server.tm_sync[self.port] = bool(mode)


class FakeClient(object):
    def __init__(self, server, host="127.0.0.1", port=2000, worker_threads=0):
        self.server = server
        self.host, self.port = host, port
        server.calls.append(("Client", host, port))

    def set_timeout(self, seconds):
        self.server.calls.append(("set_timeout", seconds))

    def get_server_version(self):
        if not self.server.running:
            raise RuntimeError("time-out of 10000ms while waiting for the simulator, make sure the "
                               "simulator is ready and connected to %s:%d" % (self.host, self.port))
        return self.server.version

    def get_client_version(self):
        return self.server.version

    def get_world(self):
        return FakeWorld(self.server)

    def get_available_maps(self):
        return ["/Game/Carla/Maps/Town01", "/Game/Carla/Maps/Town03"]

    def load_world(self, name):
        self.server.calls.append(("load_world", name))
        if name not in ("Town01", "Town03"):
            raise RuntimeError("map not found")
        self.server.map_name = "Carla/Maps/" + name
        self.server.settings = self.server.carla.WorldSettings()  # reset_settings=True
        return FakeWorld(self.server)

    def get_trafficmanager(self, port=8000):
        self.server.calls.append(("get_trafficmanager", port))
        return FakeTrafficManager(self.server, port)

    def apply_batch(self, commands, do_tick=False):
        ids = [int(c.actor_id) for c in commands]
        self.server.calls.append(("apply_batch", tuple(type(c).__name__ for c in commands), ids))
        for actor_id in ids:
            self.server.destroy(actor_id)


class FakeModule(object):
    """The real carla module, except that ``Client`` opens a FakeClient on ``server``."""

    def __init__(self, carla, server):
        self._carla = carla
        self._server = server

    def Client(self, host="127.0.0.1", port=2000, worker_threads=0):
        return FakeClient(self._server, host, port, worker_threads)

    def __getattr__(self, name):
        return getattr(self._carla, name)


class FakeServer(object):
    """One fake CARLA server: configure it, hand ``.module`` to CarlaWorld, inspect ``.calls``."""

    def __init__(self, carla, synchronous=False, fixed_delta_seconds=None, version="0.9.16",
                 map_name="Carla/Maps/Town10HD_Opt", spawn_point_count=8):
        self.carla = carla
        self.module = FakeModule(carla, self)
        self.settings = carla.WorldSettings()
        self.settings.synchronous_mode = synchronous
        self.settings.fixed_delta_seconds = fixed_delta_seconds
        self.original_settings = copy_settings(carla, self.settings)
        self.version = version
        self.map_name = map_name
        self.spawn_point_count = spawn_point_count
        self.running = True
        self.calls = []
        self.frame = 1000
        self.elapsed = 0.0
        self.actors = {}
        self.spawned = []
        self.destroyed = []
        self.tm_sync = {}
        self.next_id = 24
        self.occupied_x = []
        self.fail_spawn = set()
        self.drop = set()
        self.delay = 0.0
        self.events = {}
        self.tick_error = None
        self.threads = []

    # -- inspection -----------------------------------------------------------------------------

    def names(self):
        return [c[0] for c in self.calls]

    def calls_named(self, name):
        return [c for c in self.calls if c[0] == name]

    def alive(self):
        return sorted(self.actors)

    def sensors(self, type_prefix="sensor."):
        return [a for a in self.actors.values() if a.type_id.startswith(type_prefix)]

    def vehicles(self):
        return [a for a in self.actors.values() if a.type_id.startswith("vehicle.")]

    def join(self):
        for thread in self.threads:
            thread.join(5.0)

    # -- the simulation --------------------------------------------------------------------------

    def add_actor(self, blueprint, transform, parent):
        actor = FakeActor(self, self.next_id, blueprint, transform, parent)
        self.next_id += 1
        self.actors[actor.id] = actor
        self.spawned.append(actor)
        return actor

    def destroy(self, actor_id):
        actor = self.actors.pop(actor_id, None)
        if actor is not None:
            actor.alive = False
            actor.callback = None
            self.destroyed.append(actor_id)

    def tick(self, seconds):
        self.calls.append(("tick", seconds))
        if self.tick_error is not None:
            raise self.tick_error
        assert self.settings.synchronous_mode, "tick() in asynchronous mode"
        dt = self.settings.fixed_delta_seconds or 0.05
        self.frame += 1
        self.elapsed += dt
        carla = self.carla
        for vehicle in self.vehicles():
            yaw = math.radians(vehicle.transform.rotation.yaw)
            speed = 10.0 * vehicle.control.throttle * (-1 if vehicle.control.reverse else 1)
            vehicle.velocity = carla.Vector3D(speed * math.cos(yaw), speed * math.sin(yaw), 0.0)
            loc = vehicle.transform.location
            vehicle.transform = carla.Transform(
                carla.Location(x=loc.x + vehicle.velocity.x * dt, y=loc.y + vehicle.velocity.y * dt,
                               z=loc.z),
                vehicle.transform.rotation)
        deliveries = []
        for sensor in self.sensors():
            if sensor.callback is None or sensor.type_id in self.drop:
                continue
            data = sensor.measure(self.frame)
            if data is not None:
                deliveries.append((sensor, data))
            for kind, event in self.events.get(self.frame, ()):
                if kind == sensor.type_id:
                    deliveries.append((sensor, event))
        self._deliver(deliveries)
        return self.frame

    def _deliver(self, deliveries):
        if self.delay <= 0:
            for sensor, data in deliveries:
                sensor.emit(data)
            return

        def later():
            threading.Event().wait(self.delay)
            for sensor, data in deliveries:
                sensor.emit(data)

        thread = threading.Thread(target=later, daemon=True)
        thread.start()
        self.threads.append(thread)


def collision(carla, frame, other="vehicle.audi.tt", impulse=(3.0, 4.0, 0.0)):
    return Obj(frame=frame, other_actor=Obj(type_id=other), normal_impulse=carla.Vector3D(*impulse))


def lane_invasion(carla, frame, *types):
    return Obj(frame=frame, crossed_lane_markings=[Obj(type=t) for t in types])
