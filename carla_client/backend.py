"""The world-backend interface that every simulator (built-in, CARLA) implements for the server.

The server (carla_client/serve.py) owns the protocol; a backend owns the world. One backend object
lives for the whole process; a *session* (one connected trainer) runs between ``start()`` and
``stop()``, and a process may see many sessions.
"""
from typing import Any, Dict, Optional

# The schema lives with the protocol (bridge/schema.py); it is re-exported here for code that imported
# it from this module before it moved.
from bridge.errors import SnapshotUnsupportedError
from bridge.schema import LEAD_RANGE, MEASUREMENT_SPEC, VEHICLE_CONTROL_SPEC, VehicleControl
from bridge.spec import Tick, WorldSpec  # Tick: one tick, as both sides see it

__all__ = ["LEAD_RANGE", "MEASUREMENT_SPEC", "VEHICLE_CONTROL_SPEC", "Tick", "VehicleControl", "WorldBackend",
           "WorldSpec"]


class WorldBackend(object):
    """Base class of world backends. Subclasses set ``name``/``version`` and implement the methods."""

    name = "abstract"
    version = "0"
    #: True when the same seed and the same actions give byte-identical observations.
    deterministic = False
    #: True when ``snapshot``/``restore`` save and restore the full state (announced in hello).
    supports_snapshot = False
    #: seconds of wall time every served reset and step lasts at least, from its request's arrival
    #: to its reply's departure: an emulated GPU-bound tick (the built-in world's
    #: ``--tick-latency-ms``); bridge.server sleeps what the work leaves. 0: as fast as it goes.
    tick_latency = 0.0

    def settings(self) -> Dict[str, Any]:
        """What it takes to build this world again (JSON-able; announced in hello as
        ``sim.settings``, kept with recorded datasets for exact replays). Default: nothing."""
        return {}

    def spec(self) -> WorldSpec:
        """The observation, measurement and action fields and the tick length (constant per process)."""
        raise NotImplementedError

    def step_budget(self) -> Optional[float]:
        """Seconds a reset or step may take at most (announced in ``hello``); None: no promise."""
        return None

    def stats(self) -> Dict[str, int]:
        """Counters worth logging (late events, timeouts...); empty when there are none."""
        return {}

    def start(self) -> None:
        """Begins a session: connect, save and change world settings, spawn actors (idempotent)."""

    def reset(self, seed: Optional[int], options: Dict[str, Any]) -> Tick:
        """Starts a new episode (seeded if ``seed`` is not None) and returns its first tick."""
        raise NotImplementedError

    def step(self, control: VehicleControl) -> Tick:
        """Applies ``control``, advances the world by exactly one tick and returns that tick."""
        raise NotImplementedError

    def snapshot(self) -> Any:
        """The world's full state (vehicles, NPCs, clocks, random generators, sensors) as an opaque
        object that ``restore`` accepts; later steps must not change it.

        Raises:
            SnapshotUnsupportedError: this world cannot save its full state (the default).
            SnapshotError: nothing to save yet (e.g. before the first reset).
        """
        raise SnapshotUnsupportedError(
            "the {} world cannot save and restore its full state; it refuses rather than "
            "approximate".format(self.name))

    def restore(self, state: Any) -> Tick:
        """Puts the world back into ``state`` exactly and returns the tick of that moment (as it
        was returned then); the same controls then give byte-identical ticks. ``state`` stays
        valid for further restores.

        Raises:
            SnapshotUnsupportedError: this world cannot save its full state (the default).
        """
        raise SnapshotUnsupportedError(
            "the {} world cannot save and restore its full state".format(self.name))

    def stop(self) -> None:
        """Ends the session: restore every setting changed, destroy every actor spawned.

        Idempotent, and must be safe to call after a failed ``start()``.
        """

    def close(self) -> None:
        """Releases everything at process exit (calls ``stop()``). Idempotent."""
        self.stop()

    def __enter__(self) -> "WorldBackend":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
