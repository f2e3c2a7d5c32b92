"""Factories of the registered world kinds (carla_client/registry.py): options in, WorldBackend out.

Each imports its backend only when called, so selecting the built-in world never imports CARLA.
"""
from typing import Any, Sequence

from carla_client.backend import WorldBackend
from carla_client.sensors import SensorConfig


def builtin(config: Any, sensors: Sequence[SensorConfig]) -> WorldBackend:
    """The built-in world (``--world builtin``)."""
    from carla_client.builtin import BuiltinWorld
    return BuiltinWorld(sensors=sensors, tick_seconds=config.tick, seed=config.seed,
                        npc_vehicles=config.npc_vehicles, circuits=config.circuits,
                        tick_latency=config.tick_latency_ms / 1000.0)


def carla(config: Any, sensors: Sequence[SensorConfig]) -> WorldBackend:
    """A CARLA 0.9.x server (``--world carla``)."""
    from carla_client.carla_backend import CarlaWorld
    return CarlaWorld(host=config.host, port=config.port, sensors=sensors,
                      tick_seconds=config.tick, tm_port=config.tm_port,
                      timeout=config.carla_timeout, seed=config.seed)


def carla084(config: Any, sensors: Sequence[SensorConfig]) -> WorldBackend:
    """A CARLA 0.8.4 server (``--world carla084``), through the PythonClient or our wire client."""
    from carla_client.carla084.world import Carla084World
    options = config.backend_options
    return Carla084World(host=config.host, port=config.port, sensors=sensors,
                         tick_seconds=config.tick, seed=config.seed,
                         legacy_client=options["legacy_client"],
                         server_timeout=options["server_timeout"],
                         connect_timeout=config.carla_timeout, weather=options["weather"],
                         vehicles=options["vehicles"], pedestrians=options["pedestrians"],
                         quality=options["quality"])
