"""A fake CARLA server for tests, as hostile as a real one when asked: Client, World, Map, actors, TM.

The fakes stand in only for what needs a server. Values (WorldSettings, Transform, Location, Rotation,
Vector3D, VehicleControl, LaneType, LaneMarkingType, command.DestroyActor) are the REAL ``carla``
package's (0.9.16 under Python 3.11, 0.9.15 under 3.7), so the backend is exercised against CARLA's
own types::

    server = FakeServer(carla)
    world = CarlaWorld(sensors=..., carla_module=server.module)

``server.module`` behaves like the ``carla`` module except that ``Client`` connects to this server.
Every call is recorded in ``server.calls``.

The world is a straight road along +x: lane centre y = 0, lane width 3.5 m, yaw 0 (so CARLA's right
vector is +y). Spawn points lie on it every 10 m. A vehicle moves at 10 m/s x throttle along its yaw.

By default each tick delivers every listening sensor's data (and ``server.events[frame]``, a list of
(sensor type, event) pairs) synchronously inside ``tick()``: the easy case. The real server's habits
are options (docs/carla_backend.md, "The hardened fake"):

- ``delays[type prefix] = (low, high)``: that sensor's deliveries come from a worker thread (like
  libcarla's network threads) after a delay drawn per delivery, so they arrive after ``tick()``
  returned and in any order across sensors; ``delay = s`` is a fixed delay for every sensor.
- ``lags[type prefix] = (low, high)``: frames of lag: a delivery for frame N is held back until tick
  N + k has happened (events several frames late; data this late makes the step time out).
- ``duplicate = p``: a data measurement is delivered twice with probability p.
- ``stale = p``: after a tick, with probability p, a data sensor re-delivers a measurement from up to
  ``stale_depth`` frames back (also frames from before a reset, after it).
- ``drop`` (sensor types, every frame) and ``drop_frames[frame]`` (types, that frame only): withheld.
- ``fail(name, times, error)``: the next ``times`` calls named ``name`` (``tick``, ``apply_settings``,
  ``try_spawn_actor``, ``tm.set_synchronous_mode``, ``apply_control``... any recorded name) raise
  ``error``, by default libcarla's ``RuntimeError("time-out of ...ms while waiting for the simulator")``.
- ``destroy_from_outside(actor_id)``: another client destroyed the actor; every later call on it raises
  ``RuntimeError("trying to operate on a destroyed actor ...")``, and its sensor stops delivering.
- ``bound_ports``: Traffic Manager ports another process holds: ``get_trafficmanager`` there raises
  libcarla's bind error.
- ``tick_seconds_taken``: wall-clock seconds each ``tick()`` blocks (a slow server);
  ``slow_calls[name] = s``: the same for any other call.

``server.emitted`` records every delivery (type, frame, payload, time before and after the callback),
so a test can tell when each event reached the backend.
"""
import fnmatch
import heapq
import itertools
import math
import random
import threading
import time

import numpy as np

from carla_client import carla_api

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

EVENT_TYPES = ("sensor.other.collision", "sensor.other.lane_invasion")

#: the messages libcarla's RuntimeErrors carry (client 0.9.x).
TIMEOUT_MESSAGE = ("time-out of {ms}ms while waiting for the simulator, make sure the simulator is "
                   "ready and connected to {host}:{port}")
DESTROYED_MESSAGE = ("trying to operate on a destroyed actor; an actor's function was called, but "
                     "the actor is already destroyed.")
TM_BIND_MESSAGE = ("trying to create rpc server for traffic manager; but the system failed to "
                   "create because of bind error.")

_SETTINGS_FIELDS = ("synchronous_mode", "no_rendering_mode", "fixed_delta_seconds", "substepping",
                    "max_substep_delta_time", "max_substeps", "max_culling_distance",
                    "deterministic_ragdolls", "tile_stream_distance", "actor_active_distance",
                    "spectator_as_ego")


def copy_settings(carla, s):
    """A new carla.WorldSettings equal to ``s`` (WorldSettings cannot be copied or pickled)."""
    copy = carla.WorldSettings()
    for field in _SETTINGS_FIELDS:
        if hasattr(s, field):
            setattr(copy, field, getattr(s, field))
    return copy


def settings_equal(a, b):
    """Field-by-field equality (0.9.15's WorldSettings has no ``==`` for all fields alike)."""
    return all(getattr(a, f, None) == getattr(b, f, None) for f in _SETTINGS_FIELDS)


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


def collision(carla, frame, other="vehicle.audi.tt", impulse=(3.0, 4.0, 0.0)):
    return Obj(frame=frame, other_actor=Obj(type_id=other), normal_impulse=carla.Vector3D(*impulse))


def lane_invasion(carla, frame, *types):
    return Obj(frame=frame, crossed_lane_markings=[Obj(type=t) for t in types])


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
        self.server.enter(name, self.id, *args)
        if not self.alive:
            raise RuntimeError(DESTROYED_MESSAGE)

    @property
    def is_alive(self):
        return self.alive

    # vehicles
    def get_transform(self):
        self._call("get_transform")
        return self.transform

    def get_velocity(self):
        self._call("get_velocity")
        return self.velocity

    def get_acceleration(self):
        self._call("get_acceleration")
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
        callback = self.callback
        if callback is None:
            return
        before = time.monotonic()
        callback(data)
        self.server.emitted.append(Obj(type=self.type_id, frame=int(data.frame), data=data,
                                       before=before, after=time.monotonic(),
                                       thread=threading.current_thread().name))

    def measure(self, frame):
        """This sensor's data for ``frame``, as the server would stream it."""
        settings = self.attributes
        if self.type_id.startswith("sensor.camera"):
            return image(frame, int(settings["image_size_x"]), int(settings["image_size_y"]))
        if self.type_id.startswith("sensor.lidar"):
            return lidar(frame, [[frame, 0.0, 0.0, 1.0], [0.0, frame, 0.0, 0.5]])
        return None


class LegacyActor(FakeActor):
    """An actor of a client before 0.9.10: ``set_velocity``/``set_angular_velocity`` only."""

    set_target_velocity = None
    set_target_angular_velocity = None

    def set_velocity(self, velocity):
        self._call("set_velocity", velocity)
        self.velocity = velocity

    def set_angular_velocity(self, velocity):
        self._call("set_angular_velocity", velocity)


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
        self.server.enter("get_waypoint", project_to_road, lane_type)
        if not project_to_road and abs(location.y) > LANE_WIDTH / 2:
            return None
        return FakeWaypoint(self.server.carla, location.x)


class FakeWorld(object):
    def __init__(self, server):
        self.server = server

    def get_settings(self):
        self.server.enter("get_settings")
        return copy_settings(self.server.carla, self.server.settings)

    def apply_settings(self, settings, seconds=0.0):
        copy = copy_settings(self.server.carla, settings)
        self.server.enter("apply_settings", copy)
        self.server.settings = copy
        return self.server.frame

    def get_map(self):
        self.server.enter("get_map")
        return FakeMap(self.server, self.server.map_name)

    def get_blueprint_library(self):
        return FakeBlueprintLibrary()

    def try_spawn_actor(self, blueprint, transform, attach_to=None):
        server = self.server
        server.enter("try_spawn_actor", blueprint.id, transform)
        if any(abs(transform.location.x - x) < 1e-6 for x in server.occupied_x):
            return None
        return server.add_actor(blueprint, transform, attach_to)

    def spawn_actor(self, blueprint, transform, attach_to=None):
        server = self.server
        server.enter("spawn_actor", blueprint.id, transform)
        if blueprint.id in server.fail_spawn:
            raise RuntimeError("Spawn failed because of collision at spawn position")
        return server.add_actor(blueprint, transform, attach_to)

    def get_actors(self):
        self.server.calls.append(("get_actors",))
        return FakeActorList(self.server.actors.values())

    def get_snapshot(self):
        self.server.enter("get_snapshot")
        return Obj(frame=self.server.frame,
                   timestamp=Obj(frame=self.server.frame, elapsed_seconds=self.server.elapsed))

    def tick(self, seconds=0.0):
        return self.server.tick(seconds)


class LegacyWorld(FakeWorld):
    """A world of a client whose ``tick()`` takes no timeout (Boost.Python raises ArgumentError)."""

    def tick(self, *args):
        if args:
            raise _ArgumentError("Python argument types in World.tick(World, float) did not match "
                                 "C++ signature: tick(carla::client::World {lvalue})")
        return self.server.tick(None)


class _ArgumentError(TypeError):
    """Boost.Python.ArgumentError derives from TypeError."""


class FakeTrafficManager(object):
    def __init__(self, server, port):
        self.server = server
        self.port = port

    def set_synchronous_mode(self, mode):
        self.server.enter("tm.set_synchronous_mode", self.port, bool(mode))
        self.server.tm_sync[self.port] = bool(mode)


class FakeClient(object):
    def __init__(self, server, host="127.0.0.1", port=2000, worker_threads=0):
        self.server = server
        self.host, self.port = host, port
        server.calls.append(("Client", host, port))

    def set_timeout(self, seconds):
        self.server.calls.append(("set_timeout", seconds))
        self.server.client_timeout = seconds

    def get_server_version(self):
        if not self.server.running:
            raise RuntimeError(TIMEOUT_MESSAGE.format(ms=10000, host=self.host, port=self.port))
        self.server.enter("get_server_version")
        return self.server.version

    def get_client_version(self):
        return self.server.version

    def get_world(self):
        self.server.enter("get_world")
        return self.server.world_class(self.server)

    def get_available_maps(self):
        return ["/Game/Carla/Maps/Town01", "/Game/Carla/Maps/Town03"]

    def load_world(self, name):
        self.server.enter("load_world", name)
        if name not in ("Town01", "Town03"):
            raise RuntimeError("map not found")
        self.server.map_name = "Carla/Maps/" + name
        self.server.settings = self.server.carla.WorldSettings()  # reset_settings=True
        return self.server.world_class(self.server)

    def get_trafficmanager(self, port=8000):
        self.server.enter("get_trafficmanager", port)
        if port in self.server.bound_ports:
            raise RuntimeError(TM_BIND_MESSAGE)
        return FakeTrafficManager(self.server, port)

    def apply_batch(self, commands, do_tick=False):
        ids = [int(c.actor_id) for c in commands]
        self.server.enter("apply_batch", tuple(type(c).__name__ for c in commands), ids)
        for actor_id in ids:  # like libcarla: commands on actors already gone fail silently
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


class _Deliverer(object):
    """Emits sensor callbacks from worker threads at their due times (libcarla's network threads).

    Workers start on demand and end after a second with nothing to do, so no test has to close it.
    """

    WORKERS = 2

    def __init__(self):
        self._heap = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._workers = []
        self._busy = 0

    def schedule(self, due, sensor, data):
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._order), sensor, data))
            self._workers = [w for w in self._workers if w.is_alive()]
            if len(self._workers) < self.WORKERS:
                worker = threading.Thread(target=self._run, name="fake-carla-stream", daemon=True)
                self._workers.append(worker)
                worker.start()
            self._cond.notify()

    def _run(self):
        idle_since = time.monotonic()
        while True:
            with self._cond:
                if not self._heap:
                    if time.monotonic() - idle_since > 1.0:
                        self._workers = [w for w in self._workers
                                         if w is not threading.current_thread()]
                        return
                    self._cond.wait(0.2)
                    continue
                due, _, sensor, data = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._busy += 1
            try:
                sensor.emit(data)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()
                idle_since = time.monotonic()

    def join(self, timeout=10.0):
        """Waits until everything scheduled so far was delivered."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._heap or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("fake CARLA deliveries still pending after %g s" % timeout)
                self._cond.wait(min(remaining, 0.1))


class FakeServer(object):
    """One fake CARLA server: configure it, hand ``.module`` to CarlaWorld, inspect ``.calls``."""

    def __init__(self, carla, synchronous=False, fixed_delta_seconds=None, version=None,
                 map_name="Carla/Maps/Town10HD_Opt", spawn_point_count=8, seed=0):
        self.carla = carla
        self.module = FakeModule(carla, self)
        self.settings = carla.WorldSettings()
        self.settings.synchronous_mode = synchronous
        self.settings.fixed_delta_seconds = fixed_delta_seconds
        self.original_settings = copy_settings(carla, self.settings)
        # by default the server runs the client library's own version, as it should
        self.version = version or carla_api.module_version(carla)
        self.map_name = map_name
        self.spawn_point_count = spawn_point_count
        self.world_class = FakeWorld
        self.actor_class = FakeActor
        self.running = True
        self.calls = []
        self.client_timeout = None
        self.frame = 1000
        self.elapsed = 0.0
        self.actors = {}
        self.spawned = []
        self.destroyed = []
        self.destroyed_outside = []
        self.tm_sync = {}
        self.bound_ports = set()
        self.next_id = 24
        self.occupied_x = []
        self.fail_spawn = set()
        self.failures = {}
        self.slow_calls = {}
        self.tick_error = None
        self.tick_seconds_taken = 0.0
        # delivery: synchronous unless delays or lags are set
        self.rng = random.Random(seed)
        self.delay = 0.0
        self.delays = {}
        self.lags = {}
        self.duplicate = 0.0
        self.stale = 0.0
        self.stale_depth = 3
        self.drop = set()
        self.drop_frames = {}
        self.events = {}
        self.emitted = []
        self._held = []  # (release after this frame, sensor, data)
        self._deliverer = _Deliverer()

    # -- configuration --------------------------------------------------------------------------

    def fail(self, name, times=1, error=None):
        """The next ``times`` calls named ``name`` raise ``error`` (default: libcarla's time-out)."""
        if error is None:
            error = RuntimeError(TIMEOUT_MESSAGE.format(
                ms=int(1000 * (self.client_timeout or 10.0)), host="127.0.0.1", port=2000))
        self.failures.setdefault(name, []).extend([error] * times)

    def destroy_from_outside(self, actor_id):
        """Another client destroys one of our actors."""
        self.calls.append(("destroyed_from_outside", actor_id))
        self.destroyed_outside.append(actor_id)
        self.destroy(actor_id)

    # -- inspection -----------------------------------------------------------------------------

    def enter(self, name, *args):
        """Records a call and raises the failure scheduled for it, if any."""
        self.calls.append((name,) + args)
        if self.slow_calls.get(name):
            time.sleep(self.slow_calls[name])
        pending = self.failures.get(name)
        if pending:
            raise pending.pop(0)

    def names(self):
        return [c[0] for c in self.calls]

    def calls_named(self, name):
        return [c for c in self.calls if c[0] == name]

    def alive(self):
        return sorted(self.actors)

    def sensors(self, type_prefix="sensor."):
        return [a for a in self.actors.values() if a.type_id.startswith(type_prefix)]

    def sensor(self, type_id):
        return next(a for a in self.actors.values() if a.type_id == type_id)

    def vehicles(self):
        return [a for a in self.actors.values() if a.type_id.startswith("vehicle.")]

    def restored(self):
        """True if the settings are the originals and no TM was left synchronous."""
        return (settings_equal(self.settings, self.original_settings)
                and all(not on for on in self.tm_sync.values()))

    def join(self, timeout=10.0):
        """Waits for every scheduled delivery (held lagging ones excepted)."""
        self._deliverer.join(timeout)

    def emitted_events(self):
        return [e for e in self.emitted if e.type in EVENT_TYPES]

    # -- the simulation --------------------------------------------------------------------------

    def add_actor(self, blueprint, transform, parent):
        actor = self.actor_class(self, self.next_id, blueprint, transform, parent)
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
        self.enter("tick", seconds)
        if self.tick_error is not None:
            raise self.tick_error
        assert self.settings.synchronous_mode, "tick() in asynchronous mode"
        if self.tick_seconds_taken > 0:
            time.sleep(self.tick_seconds_taken)
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
        withheld = self.drop | set(self.drop_frames.get(self.frame, ()))
        for sensor in self.sensors():
            if sensor.callback is None or sensor.type_id in withheld:
                continue
            data = sensor.measure(self.frame)
            if data is not None:
                deliveries.append((sensor, data))
                if self.duplicate and self.rng.random() < self.duplicate:
                    deliveries.append((sensor, data))
            for kind, event in self.events.get(self.frame, ()):
                if kind == sensor.type_id:
                    deliveries.append((sensor, event))
        if self.stale and self.rng.random() < self.stale:
            data_sensors = [s for s in self.sensors() if s.callback is not None
                            and s.type_id not in EVENT_TYPES]
            if data_sensors:
                sensor = self.rng.choice(data_sensors)
                old = self.frame - self.rng.randint(1, self.stale_depth)
                deliveries.append((sensor, sensor.measure(old)))
        self._deliver(deliveries)
        return self.frame

    def _draw(self, table, type_id):
        for prefix, (low, high) in table.items():
            if type_id.startswith(prefix):
                return self.rng.uniform(low, high) if isinstance(low, float) or isinstance(
                    high, float) else self.rng.randint(low, high)
        return 0

    def _deliver(self, deliveries):
        released = [(s, d) for f, s, d in self._held if f <= self.frame]
        self._held = [(f, s, d) for f, s, d in self._held if f > self.frame]
        due_now = released
        for sensor, data in deliveries:
            lag = self._draw(self.lags, sensor.type_id)
            if lag > 0:
                self._held.append((self.frame + lag, sensor, data))
            else:
                due_now.append((sensor, data))
        if not self.delays and self.delay <= 0:
            for sensor, data in due_now:
                sensor.emit(data)
            return
        now = time.monotonic()
        for sensor, data in due_now:
            delay = self._draw(self.delays, sensor.type_id) if self.delays else self.delay
            self._deliverer.schedule(now + max(delay, 0.0), sensor, data)
