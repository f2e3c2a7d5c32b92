"""``python -m tests.peers.fake_carla_client [carla_client options]``: ``python -m carla_client --world
carla`` as users run it (argument parsing, signal handling, serving), except that CarlaWorld talks to
a fake CARLA server (tests/fake_carla.py) living in this process. At exit it prints one line,
``state {"restored": ..., "actors": [...], ...}``, so a test can check what a signal left behind.
Needs the real ``carla`` package (its value types)."""
import json
import sys

import carla

from carla_client import __main__ as cli
from carla_client.carla_backend import CarlaWorld
from carla_client.sensors import load_sensors
from tests import fake_carla


def main(argv=None):
    server = fake_carla.FakeServer(carla)

    def make_backend(config):
        return CarlaWorld(host=config.host, port=config.port, sensors=load_sensors(config.sensors),
                          tick_seconds=config.tick, tm_port=config.tm_port,
                          timeout=config.carla_timeout, seed=config.seed,
                          carla_module=server.module)

    cli.make_backend = make_backend
    code = cli.main(["--world", "carla"] + list(sys.argv[1:] if argv is None else argv))
    print("state " + json.dumps({
        "restored": server.restored(), "actors": server.alive(),
        "synchronous": bool(server.settings.synchronous_mode),
        "spawned": len(server.spawned)}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
