"""The built-in world: a small deterministic driving simulator shaped like the CARLA backend.

See docs/builtin_world.md. ``BuiltinWorld`` is the WorldBackend; ``TrackParams`` and
``VehicleParams`` tune the circuit and the car; ``PurePursuit`` is a scripted driver for tests,
benchmarks and baselines.
"""
from carla_client.builtin.autopilot import PurePursuit
from carla_client.builtin.road import TrackParams
from carla_client.builtin.vehicle import VehicleParams
from carla_client.builtin.world import RESET_OPTIONS, BuiltinWorld

__all__ = ["BuiltinWorld", "PurePursuit", "RESET_OPTIONS", "TrackParams", "VehicleParams"]
