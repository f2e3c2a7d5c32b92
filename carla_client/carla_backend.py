"""CarlaWorld: a WorldBackend that drives a CARLA server in synchronous mode, one tick per step.

See docs/carla_backend.md for how it maps onto CARLA's API and which traps it avoids.
"""
import atexit
import logging
import math
import random
import time
import weakref
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from bridge.errors import BridgeError, SpecError
from bridge.schema import LEAD_RANGE, MEASUREMENT_SPEC, VEHICLE_CONTROL_SPEC, VehicleControl
from bridge.spec import Tick, WorldSpec
from carla_client import carla_api
from carla_client import carla_lead
from carla_client.backend import WorldBackend
from carla_client.carla_api import (CarlaActorLostError, CarlaConnectionError, CarlaSetupError,
                                    CarlaTimeoutError, CarlaUnavailableError, SensorTimeoutError,
                                    calling, translate)
from carla_client.carla_sensors import (EventQueue, FrameQueue, configure_blueprint, to_event,
                                        to_observation)
from carla_client.sensors import SENSOR_TYPES, SensorConfig, default_sensors, observation_fields

__all__ = ["CarlaWorld", "CarlaActorLostError", "CarlaConnectionError", "CarlaSetupError",
           "CarlaTimeoutError", "CarlaUnavailableError", "SensorTimeoutError",
           "DEFAULT_ROUTE_LENGTH", "unfreeze_command"]

logger = logging.getLogger(__name__)

#: metres of lane travel that count as route_completion 1.0 unless reset's options say otherwise.
DEFAULT_ROUTE_LENGTH = 1000.0

#: the ego's role name, as CARLA's own tools (manual_control, ros-bridge) name the agent's car.
EGO_ROLE_NAME = "hero"

#: seconds allowed for loading a town, which takes far longer than ordinary calls.
LOAD_WORLD_TIMEOUT = 120.0

#: the world settings this backend needs; only those that differ are changed, and restored.
_SYNC_FIELDS = ("synchronous_mode", "fixed_delta_seconds")

#: seconds between the first and second attempt to restore a setting; doubled per retry, up to
#: _RESTORE_MAX_BACKOFF.
_RESTORE_FIRST_BACKOFF = 0.1
_RESTORE_MAX_BACKOFF = 2.0

#: counters reported by ``CarlaWorld.stats()``.
STAT_NAMES = ("late_events", "orphaned_events", "discarded_frames", "tick_timeouts",
              "sensor_timeouts", "actors_lost", "rebuilds", "restore_failures")


def unfreeze_command(host: str, port: int, tm_port: Optional[int] = None,
                     fixed_delta_seconds: Any = "keep") -> str:
    """The shell command that takes a CARLA server out of the synchronous mode we left it in."""
    parts = ["python -m carla_client.unfreeze --host {} --port {}".format(host, port)]
    if tm_port is not None:
        parts.append("--tm-port {}".format(tm_port))
    if fixed_delta_seconds != "keep":
        parts.append("--fixed-delta-seconds {}".format(
            "none" if fixed_delta_seconds is None else "{:g}".format(fixed_delta_seconds)))
    return " ".join(parts)


class CarlaWorld(WorldBackend):
    """A CARLA server's world, driven in lockstep: one ``world.tick()`` per ``step``.

    One ego vehicle and its sensors are spawned per session (``start``) and moved, not re-created,
    on every ``reset``. ``stop`` restores exactly the world and Traffic Manager settings ``start``
    changed and destroys every actor it spawned, on every path out.

    Args:
        host, port: the CARLA server's RPC address.
        sensors: sensor configs (default: a 64x64 chase camera, collision, lane invasion).
        tick_seconds: the fixed simulation step (``fixed_delta_seconds``).
        tm_port: the Traffic Manager port, switched to synchronous mode with the world.
        timeout: the step budget: seconds a reset or step may take for its tick plus all of its
            sensors' data (announced to the trainer in ``hello``); also libcarla's timeout for
            every other call.
        vehicle_filter: blueprint filter for the ego; the first match by id is used.
        seed: seeds the spawn-point choice until ``reset`` gives a seed.
        town: a map name such as "Town03" to load at ``start`` if another map is loaded.
        restore_deadline: seconds ``stop`` keeps retrying (with back-off) to restore the world's
            and the Traffic Manager's settings before it gives up and logs how to unfreeze them.
        carla_module: the ``carla`` module or a stand-in (tests); imported when None.

    Raises:
        CarlaUnavailableError: ``carla_module`` is None and ``carla`` cannot be imported.
        CarlaSetupError: a bad argument.
    """

    name = "carla"
    deterministic = False
    #: CARLA 0.9 cannot save its physics, the Traffic Manager's state or in-flight sensor data, so
    #: snapshots are refused (hello announces it) rather than approximated by re-placing actors.
    supports_snapshot = False

    def __init__(self, host: str = "localhost", port: int = 2000,
                 sensors: Optional[Sequence[SensorConfig]] = None, tick_seconds: float = 0.05,
                 tm_port: int = 8000, timeout: float = 10.0,
                 vehicle_filter: str = "vehicle.tesla.model3", seed: int = 0,
                 town: Optional[str] = None, restore_deadline: float = 10.0,
                 carla_module: Any = None) -> None:
        self.sensors = default_sensors() if sensors is None else tuple(sensors)
        unknown = [s.name for s in self.sensors if s.type not in SENSOR_TYPES]
        if unknown:
            raise CarlaSetupError("sensors of unknown type: {}".format(unknown))
        if not (tick_seconds > 0 and timeout > 0):
            raise CarlaSetupError("tick_seconds and timeout must be positive, got {} and {}".format(
                tick_seconds, timeout))
        self.host, self.port, self.tm_port = host, int(port), int(tm_port)
        self.tick_seconds, self.timeout = float(tick_seconds), float(timeout)
        self.vehicle_filter, self.town = vehicle_filter, town
        self.restore_deadline = float(restore_deadline)
        self._where = "{}:{}".format(host, self.port)
        self._carla = carla_module if carla_module is not None else carla_api.import_carla()
        self.version = carla_api.module_version(self._carla)
        self._spec = WorldSpec(tuple(observation_fields(self.sensors)), tuple(MEASUREMENT_SPEC),
                               tuple(VEHICLE_CONTROL_SPEC), self.tick_seconds)
        self._rng = random.Random(seed)
        self._client = None  # type: Any
        self._world = None  # type: Any
        self._map = None  # type: Any
        self._tm = None  # type: Any
        self._ego = None  # type: Any
        self._spawn_points = []  # type: List[Any]
        self._actors = []  # type: List[Any]  # everything spawned, in spawn order
        self._data_queues = []  # type: List[Tuple[SensorConfig, FrameQueue]]
        self._event_queues = []  # type: List[Tuple[SensorConfig, EventQueue]]
        self._listening = []  # type: List[Any]
        self._restore_settings = {}  # type: Dict[str, Any]  # field -> original value
        self._tm_sync_set = False
        self._started = False
        self._needs_rebuild = False  # an actor was lost: the next reset spawns them again
        self._counters = dict.fromkeys(STAT_NAMES, 0)  # type: Dict[str, int]
        self.frame = None  # type: Optional[int]
        #: (start, end) time.monotonic() of the last tick's event collection: an event delivered
        #: before start is in that tick, one delivered after end is not (tests check this).
        self.events_cutoff = (0.0, 0.0)  # type: Tuple[float, float]
        self._route_length = DEFAULT_ROUTE_LENGTH
        self._route_distance = 0.0
        self._last_location = None  # type: Optional[Tuple[float, float, float]]
        _LIVE.add(self)

    @property
    def actor_ids(self) -> List[int]:
        """Ids of the actors this session spawned (the ego first), for logs and checks."""
        return [int(a.id) for a in self._actors]

    # -- WorldBackend --------------------------------------------------------------------------

    def spec(self) -> WorldSpec:
        return self._spec

    def step_budget(self) -> float:
        """Seconds a reset or step may take on this side: its tick plus every sensor's data."""
        return self.timeout

    def stats(self) -> Dict[str, int]:
        """Counters since construction: late and orphaned events, discarded stale sensor frames,
        tick and sensor timeouts, lost actors and rebuilds, failed restore attempts."""
        counters = dict(self._counters)  # the totals of queues already released, plus the live ones
        counters["discarded_frames"] += sum(q.discarded for _, q in self._data_queues)
        counters["late_events"] += sum(q.late for _, q in self._event_queues)
        counters["orphaned_events"] += sum(q.orphaned for _, q in self._event_queues)
        return counters

    def start(self) -> None:
        """Connects, switches the world (and TM) to synchronous mode, spawns the ego and sensors.

        On failure everything done so far is undone before the error propagates.

        Raises:
            CarlaConnectionError: no server at host:port.
            CarlaSetupError: no matching blueprint, no free spawn point, unknown town.
            CarlaTimeoutError: the settling tick timed out.
        """
        if self._started:
            return
        _LIVE.add(self)  # until stop() has restored everything, the exit hook stops it too
        doing = "connecting"
        try:
            self._client, self.version = carla_api.connect(self._carla, self.host, self.port,
                                                           self.timeout)
            doing = "getting the world"
            self._world = self._client.get_world()
            if self.town:
                self._world = self._load_town(self._world)
            doing = "downloading the map"
            self._map = self._world.get_map()  # downloads the OpenDRIVE map: once per session
            doing = "switching to synchronous mode"
            self._enter_synchronous_mode()
            doing = "spawning the ego vehicle"
            self._spawn_ego()
            doing = "spawning the sensors"
            self._attach_sensors()
            self._started = True
            doing = "the first tick"
            self._advance(reset=True, started=time.monotonic())  # actors and sensors settle
        except RuntimeError as e:  # libcarla's, from any call above: never let it out raw
            self.stop()
            if not carla_api.is_libcarla_error(e):
                raise
            raise translate(e, doing, self._where) from e
        except BaseException:
            self.stop()
            raise
        logger.info("CARLA %s at %s:%d: %s, ego %s (id %d), %d sensor(s), tick %g s",
                    self.version, self.host, self.port, self._map.name, self._ego.type_id,
                    self._ego.id, len(self._actors) - 1, self.tick_seconds)

    def reset(self, seed: Optional[int], options: Dict[str, Any]) -> Tick:
        """Moves the ego to a spawn point at rest and ticks once.

        Options: ``spawn_point`` (index into the map's spawn points; seeded choice otherwise) and
        ``route_length`` (metres that make route_completion 1.0; default DEFAULT_ROUTE_LENGTH).

        Raises:
            SpecError: a bad option.
        """
        self._require_started("reset")
        options = options or {}
        try:
            route_length = float(options.get("route_length", DEFAULT_ROUTE_LENGTH))
        except (TypeError, ValueError) as e:
            raise SpecError("option route_length must be a number: {}".format(e)) from e
        if not (route_length > 0 and math.isfinite(route_length)):
            raise SpecError("option route_length must be positive, got {}".format(route_length))
        index = options.get("spawn_point")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)
                                  or not 0 <= index < len(self._spawn_points)):
            raise SpecError("option spawn_point must be an index below {}, got {!r}".format(
                len(self._spawn_points), index))
        if seed is not None:
            self._rng = random.Random(seed)
        if index is None:
            index = self._rng.randrange(len(self._spawn_points))
        self._route_length = route_length
        carla = self._carla
        started = time.monotonic()  # a rebuild counts against the budget too: it is a promise
        if self._needs_rebuild or not self._actors_alive():
            self._rebuild()
        try:
            with calling("moving the ego to spawn point {}".format(index), self._where):
                self._ego.set_transform(self._spawn_points[index])
                carla_api.set_still(carla, self._ego)
                self._ego.apply_control(carla.VehicleControl())
            return self._advance(reset=True, started=started)
        except CarlaActorLostError:
            self._lost()
            raise

    def step(self, control: VehicleControl) -> Tick:
        """Applies ``control`` and ticks once, within the step budget (``timeout``).

        Raises:
            CarlaTimeoutError / SensorTimeoutError: the tick or a sensor's data did not come within
                the budget; the session survives (the next step skips the late data).
            CarlaActorLostError: an actor of ours was destroyed from outside; reset rebuilds them.
        """
        self._require_started("step")
        if self._needs_rebuild:
            raise CarlaActorLostError("an actor of this session was lost (destroyed by another "
                                      "client): call reset to spawn the ego and sensors again")
        started = time.monotonic()
        try:
            with calling("applying the control to the ego", self._where):
                self._ego.apply_control(carla_api.vehicle_control(
                    self._carla, control.throttle, control.steer, control.brake,
                    control.hand_brake, control.reverse))
            return self._advance(reset=False, started=started)
        except CarlaActorLostError:
            self._lost()
            raise

    def stop(self) -> None:
        """Stops sensors, destroys every spawned actor, restores the settings start changed.

        Idempotent and safe after a failed or partial start. Failures are logged, not raised,
        so that the remaining steps still run and an error in flight is not masked; an interrupt
        (KeyboardInterrupt) leaves the unfinished steps for the next call.
        """
        self._release_actors()
        if self._restore_settings:
            if self._retry("restoring the world settings {}".format(self._restore_settings),
                           self._apply_restore):
                self._restore_settings = {}  # cleared only once it worked: a later stop retries
        if self._tm_sync_set:
            if self._tm is None or self._retry(
                    "switching the Traffic Manager on port {} back to asynchronous mode".format(
                        self.tm_port), lambda: self._tm.set_synchronous_mode(False)):
                self._tm_sync_set = False
        if not self._restore_settings and not self._tm_sync_set:
            self._tm, self._world, self._client = None, None, None
            _LIVE.discard(self)
        self._ego, self._map = None, None
        self._spawn_points = []
        self._started = False
        self._needs_rebuild = False
        self.frame = None

    def _release_actors(self) -> None:
        """Stops the sensors and destroys every actor spawned, sensors first; logs failures."""
        while self._listening:
            sensor = self._listening[-1]
            try:
                sensor.stop()
            except Exception as e:  # e.g. destroyed by another client: nothing left to stop
                logger.warning("could not stop sensor %s: %s", getattr(sensor, "id", "?"), e)
            self._listening.pop()
        if self._actors:
            try:
                # sensors before the vehicle they ride on (reverse spawn order)
                self._client.apply_batch(carla_api.destroy_commands(
                    self._carla, reversed(self._actors)))
            except Exception as e:
                logger.error("could not destroy actors %s: %s", [a.id for a in self._actors], e)
            self._actors = []
        for _, frame_queue in self._data_queues:
            self._counters["discarded_frames"] += frame_queue.discarded
        for _, event_queue in self._event_queues:
            event_queue.close()
            self._counters["late_events"] += event_queue.late
            self._counters["orphaned_events"] += event_queue.orphaned
        self._data_queues, self._event_queues = [], []

    def _apply_restore(self) -> None:
        settings = self._world.get_settings()
        for field, value in self._restore_settings.items():
            setattr(settings, field, value)
        self._world.apply_settings(settings)

    def _retry(self, what: str, action: Any) -> bool:
        """Runs ``action`` until it succeeds, with back-off, for up to ``restore_deadline`` s.

        Returns False (after logging the exact command that unfreezes the server) if it never did.
        An interrupt (KeyboardInterrupt) propagates: the record stays for the next ``stop``.
        """
        deadline = time.monotonic() + self.restore_deadline
        backoff = _RESTORE_FIRST_BACKOFF
        attempt = 0
        while True:
            attempt += 1
            try:
                action()
            except Exception as e:
                self._counters["restore_failures"] += 1
                if time.monotonic() + backoff > deadline:
                    logger.critical(
                        "GAVE UP %s on the CARLA server at %s after %d attempt(s) in %.1f s (last "
                        "error: %s). The server stays in synchronous mode and waits for a tick that "
                        "no one sends: every client sees a frozen world. Unfreeze it with\n    %s\n"
                        "(or CARLA's `python PythonAPI/util/config.py --host %s --port %d "
                        "--no-sync`), or restart the server. close() and the exit hook try again.",
                        what, self._where, attempt, self.restore_deadline, e,
                        self._unfreeze_command(), self.host, self.port)
                    return False
                logger.warning("%s failed (attempt %d: %s); retrying in %.1f s", what, attempt, e,
                               backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, _RESTORE_MAX_BACKOFF)
            else:
                if attempt > 1:
                    logger.info("%s succeeded on attempt %d", what, attempt)
                return True

    def _unfreeze_command(self) -> str:
        return unfreeze_command(self.host, self.port, self.tm_port if self._tm_sync_set else None,
                                self._restore_settings.get("fixed_delta_seconds", "keep"))

    # -- start ---------------------------------------------------------------------------------

    def _load_town(self, world: Any) -> Any:
        current = str(world.get_map().name).rsplit("/", 1)[-1]
        if current == self.town:
            return world
        logger.info("loading %s (was %s)", self.town, current)
        self._client.set_timeout(max(self.timeout, LOAD_WORLD_TIMEOUT))
        try:
            return self._client.load_world(self.town)
        except RuntimeError as e:
            try:
                available = ", ".join(sorted(self._client.get_available_maps()))
            except RuntimeError:
                available = "unknown (the server did not answer)"
            raise CarlaSetupError("cannot load town {!r}: {}; available: {}".format(
                self.town, e, available)) from e
        finally:
            self._client.set_timeout(self.timeout)

    def _enter_synchronous_mode(self) -> None:
        """Changes only the settings that differ, remembering their originals first."""
        settings = self._world.get_settings()
        wanted = {"synchronous_mode": True, "fixed_delta_seconds": self.tick_seconds}
        changed = {field: getattr(settings, field) for field in _SYNC_FIELDS
                   if not _same(getattr(settings, field), wanted[field])}
        if getattr(settings, "no_rendering_mode", False) and any(
                s.type.startswith("sensor.camera") for s in self.sensors):
            logger.warning("the CARLA world is in no-rendering mode: cameras will deliver no "
                           "useful images (this backend leaves that setting alone)")
        if settings.synchronous_mode:
            logger.warning(
                "the CARLA world is already in synchronous mode (another client ticks it, or an "
                "earlier run died without restoring it); this backend will tick it and leave "
                "synchronous mode on when it stops")
        if getattr(settings, "substepping", False) and self.tick_seconds > (
                settings.max_substep_delta_time * settings.max_substeps + 1e-9):
            logger.warning("tick %g s exceeds max_substep_delta_time x max_substeps (%g x %d): "
                           "CARLA's physics will be inaccurate", self.tick_seconds,
                           settings.max_substep_delta_time, settings.max_substeps)
        if not changed:
            return
        if "synchronous_mode" in changed:
            # only the client that made the world synchronous owns the TM's mode
            # (generate_traffic.py's synchronous_master)
            try:
                self._tm = self._client.get_trafficmanager(self.tm_port)
            except RuntimeError as e:
                if "bind" not in str(e).lower():
                    raise
                raise CarlaSetupError(
                    "the Traffic Manager cannot listen on port {} ({}): another process holds it "
                    "(another client's Traffic Manager, or a carla_client still running); pass a "
                    "free --tm-port".format(self.tm_port, e)) from e
            self._tm_sync_set = True  # before the call: a timed-out switch may still land
            self._tm.set_synchronous_mode(True)
        for field in changed:
            setattr(settings, field, wanted[field])
        self._restore_settings = changed  # before applying: a timed-out apply may still land
        self._world.apply_settings(settings)

    def _spawn_ego(self) -> None:
        library = self._world.get_blueprint_library()
        candidates = sorted(library.filter(self.vehicle_filter), key=lambda bp: bp.id)
        if not candidates:
            raise CarlaSetupError("no vehicle blueprint matches {!r} (try 'vehicle.tesla.model3' or "
                                  "'vehicle.*')".format(self.vehicle_filter))
        blueprint = candidates[0]
        if blueprint.has_attribute("role_name"):
            blueprint.set_attribute("role_name", EGO_ROLE_NAME)
        self._spawn_points = list(self._map.get_spawn_points())
        if not self._spawn_points:
            raise CarlaSetupError("map {} has no spawn points".format(self._map.name))
        order = list(range(len(self._spawn_points)))
        self._rng.shuffle(order)
        for index in order:  # try_spawn_actor returns None where something is in the way
            actor = self._world.try_spawn_actor(blueprint, self._spawn_points[index])
            if actor is not None:
                self._actors.append(actor)
                self._ego = actor
                return
        raise CarlaSetupError("could not spawn {} at any of the {} spawn points of {}: all "
                              "occupied?".format(blueprint.id, len(order), self._map.name))

    def _attach_sensors(self) -> None:
        carla = self._carla
        library = self._world.get_blueprint_library()
        for config in self.sensors:
            try:
                blueprint = configure_blueprint(library.find(config.type), config,
                                                self.tick_seconds)
                place = carla_api.transform(carla, config.x, config.y, config.z, config.pitch,
                                            config.yaw, config.roll)
                actor = self._world.spawn_actor(blueprint, place, attach_to=self._ego)
            except IndexError as e:
                raise CarlaSetupError("cannot spawn sensor {!r} ({}): {}".format(
                    config.name, config.type, e)) from e
            except RuntimeError as e:
                if not carla_api.is_libcarla_error(e):
                    raise
                raise translate(e, "spawning sensor {!r} ({})".format(config.name, config.type),
                                self._where) from e
            self._actors.append(actor)  # tracked at once: a later failure still destroys it
            if config.is_event:
                event_queue = EventQueue(config)
                self._event_queues.append((config, event_queue))
                actor.listen(event_queue.put)
            else:
                frame_queue = FrameQueue(config)
                self._data_queues.append((config, frame_queue))
                actor.listen(frame_queue.put)
            self._listening.append(actor)

    # -- ticking -------------------------------------------------------------------------------

    def _require_started(self, what: str) -> None:
        if not self._started:
            raise BridgeError("CarlaWorld.{}() called outside a session: call start() first".format(
                what))

    def _actors_alive(self) -> bool:
        try:
            return all(getattr(actor, "is_alive", True) for actor in self._actors)
        except RuntimeError:
            return False

    def _lost(self) -> None:
        self._needs_rebuild = True
        self._counters["actors_lost"] += 1

    def _rebuild(self) -> None:
        """Destroys what is left of the session's actors and spawns the ego and sensors again."""
        logger.warning("actors of this session were destroyed from outside: spawning the ego and "
                       "its sensors again")
        self._release_actors()
        self._ego = None
        doing = "spawning the ego vehicle again"
        try:
            self._spawn_ego()
            doing = "spawning the sensors again"
            self._attach_sensors()
        except RuntimeError as e:
            if not carla_api.is_libcarla_error(e):
                raise
            raise translate(e, doing, self._where) from e
        self._needs_rebuild = False
        self._counters["rebuilds"] += 1

    def _advance(self, reset: bool, started: float) -> Tick:
        """Ticks once and gathers that frame's sensor data, measurements and events.

        The tick and the sensors share one budget, ``timeout`` seconds from ``started``.
        """
        deadline = started + self.timeout
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:  # raise before ticking: a tick that times out may still happen
                raise CarlaTimeoutError(
                    "the step budget of {:g} s at {} was used up before the tick (applying the "
                    "control or respawning actors took {:.1f} s): is the server overloaded "
                    "(raise --carla-timeout)?".format(self.timeout, self._where,
                                                      time.monotonic() - started))
            frame = carla_api.tick(self._world, remaining, self._where)
        except CarlaTimeoutError:
            self._counters["tick_timeouts"] += 1
            raise
        self.frame = frame
        observation = {}
        for config, frame_queue in self._data_queues:
            try:
                data = frame_queue.get(frame, deadline)
            except SensorTimeoutError as e:
                self._counters["sensor_timeouts"] += 1
                if not self._actors_alive():  # silent because another client destroyed it
                    raise CarlaActorLostError(
                        "sensor {!r} delivered nothing for frame {} at {} because an actor of ours "
                        "is gone (destroyed by another client): this episode is over; the next "
                        "reset spawns the ego and its sensors again".format(
                            config.name, frame, self._where)) from e
                raise
            observation[config.name] = to_observation(config, data)
        with calling("reading the ego's state", self._where):
            sim_time = float(self._world.get_snapshot().timestamp.elapsed_seconds)
            measurements = self._measure(reset)
        # Events last: whatever was delivered before this point belongs in this tick.
        events = []  # type: List[Dict[str, Any]]
        cutoff_start = time.monotonic()
        for config, event_queue in self._event_queues:
            if reset:  # the previous episode's events and the teleport's own belong to no one
                event_queue.discard_through(frame)
            else:
                for event, late in event_queue.collect(frame):
                    record = to_event(config, event)
                    record["late"] = late
                    events.append(record)
        self.events_cutoff = (cutoff_start, time.monotonic())
        late_events = sum(1 for e in events if e["late"])
        if late_events:
            logger.info("%d event(s) of earlier frames reported late in frame %d: %s", late_events,
                        frame, [(e["type"], e["frame"]) for e in events if e["late"]])
        events.sort(key=lambda e: e["frame"])
        return Tick(frame, sim_time, observation, measurements, events)

    def _measure(self, reset: bool) -> Dict[str, Any]:
        """MEASUREMENT_SPEC's values from the ego's state and the lane under it.

        lateral_offset: horizontal distance from the lane centre (the nearest driving-lane
        waypoint) along the waypoint's right vector. route_distance: the ego's displacement each
        tick projected onto the forward vector of the lane under it at the end of the tick, summed
        since reset.
        """
        carla = self._carla
        transform = self._ego.get_transform()
        location = carla_api.location_tuple(transform.location)
        velocity = carla_api.location_tuple(self._ego.get_velocity())
        acceleration = carla_api.location_tuple(self._ego.get_acceleration())
        driving = carla.LaneType.Driving
        lane = self._map.get_waypoint(transform.location, project_to_road=True, lane_type=driving)
        on_lane = self._map.get_waypoint(transform.location, project_to_road=False,
                                         lane_type=driving)
        lateral, heading_error, forward = 0.0, 0.0, None
        if lane is not None:
            centre = lane.transform
            forward, right = lane_axes(centre.rotation.yaw, centre.rotation.pitch)
            offset = np.subtract(location, carla_api.location_tuple(centre.location))
            lateral = float(offset[0] * right[0] + offset[1] * right[1])
            heading_error = math.radians(wrap_degrees(transform.rotation.yaw - centre.rotation.yaw))
        if reset or self._last_location is None:
            self._route_distance = 0.0
        elif forward is not None:
            self._route_distance += float(np.dot(np.subtract(location, self._last_location),
                                                 forward))
        self._last_location = location
        lead_distance, lead_closing_speed = carla_lead.lead_vehicle(
            self._ego, lane, self._world.get_actors().filter("vehicle.*"), LEAD_RANGE)
        return {
            "location": np.array(location, dtype=np.float64),
            "yaw": wrap_degrees(transform.rotation.yaw),
            "velocity": np.array(velocity, dtype=np.float64),
            "speed": float(math.sqrt(sum(v * v for v in velocity))),
            "acceleration": np.array(acceleration, dtype=np.float64),
            "lateral_offset": lateral,
            "heading_error": heading_error,
            "route_distance": self._route_distance,
            "route_completion": self._route_distance / self._route_length,
            "off_road": on_lane is None,
            "lead_distance": lead_distance,
            "lead_closing_speed": lead_closing_speed,
        }


def lane_axes(yaw: float, pitch: float) -> Tuple[Tuple[float, float, float], Tuple[float, float]]:
    """The unit forward vector and horizontal right vector of a rotation given in degrees.

    The same as ``carla.Transform.get_forward_vector()`` and, for roll 0, the x and y of
    ``get_right_vector()`` (CARLA's left-handed axes: x forward, y right, z up), computed here so
    that no per-tick call crosses into libcarla and older clients work alike.
    """
    cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
    cp, sp = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
    return (cp * cy, cp * sy, sp), (-sy, cy)


def wrap_degrees(angle: float) -> float:
    """``angle`` in degrees wrapped to [-180, 180)."""
    return (float(angle) + 180.0) % 360.0 - 180.0


def _same(current: Any, wanted: Any) -> bool:
    if isinstance(wanted, float):
        return current is not None and abs(float(current) - wanted) < 1e-9
    return bool(current) == wanted


#: every CarlaWorld not yet collected; stopped at interpreter exit as a last safety net for code
#: that forgot ``close()`` (the server would otherwise stay synchronous and freeze).
_LIVE = weakref.WeakSet()  # type: weakref.WeakSet


@atexit.register
def _stop_all() -> None:
    for world in list(_LIVE):
        try:
            world.stop()
        except Exception:  # at exit there is no one left to tell but the log
            logger.exception("stopping a CARLA world at exit failed")
