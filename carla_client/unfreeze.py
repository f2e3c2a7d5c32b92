"""``python -m carla_client.unfreeze``: take a CARLA server out of synchronous mode left on by a client.

A CARLA server in synchronous mode with no client ticking it waits forever, and every other client
sees a frozen world. ``CarlaWorld.stop`` restores the settings it changed; when that fails for good
(the server did not answer for the whole restore deadline) it logs this command with the values to
put back. The launcher runs it too, after a carla_client was killed before it could restore. A world
that is not synchronous is left alone::

    python -m carla_client.unfreeze --host 127.0.0.1 --port 2000 --tm-port 8000 --fixed-delta-seconds none
"""
import argparse
import logging
import sys
from typing import Any, List, Optional

from bridge.errors import BridgeError
from carla_client import carla_api

logger = logging.getLogger("carla_client.unfreeze")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m carla_client.unfreeze",
        description="Switch a CARLA world (and its Traffic Manager) back to asynchronous mode.")
    parser.add_argument("--host", metavar="H", default="localhost",
                        help="CARLA server host (default: %(default)s)")
    parser.add_argument("--port", metavar="P", type=int, default=2000,
                        help="CARLA server RPC port (default: %(default)s)")
    parser.add_argument("--tm-port", metavar="P", type=int, default=None,
                        help="also switch the Traffic Manager on this port to asynchronous mode "
                             "(default: leave Traffic Managers alone)")
    parser.add_argument("--fixed-delta-seconds", metavar="S|none", default="keep",
                        help="put this fixed_delta_seconds back, 'none' for a variable time step "
                             "(default: keep the current value)")
    parser.add_argument("--timeout", metavar="S", type=float, default=10.0,
                        help="CARLA client timeout (default: %(default)s)")
    return parser.parse_args(argv)


def unfreeze(carla: Any, host: str, port: int, tm_port: Optional[int], fixed_delta: Any,
             timeout: float) -> str:
    """Applies the change; returns what was done.

    Raises:
        CarlaConnectionError, CarlaTimeoutError, CarlaSetupError: the server did not cooperate.
    """
    client, _ = carla_api.connect(carla, host, port, timeout)
    where = "{}:{}".format(host, port)
    with carla_api.calling("switching the world to asynchronous mode", where):
        world = client.get_world()
        settings = world.get_settings()
        if not settings.synchronous_mode:
            return "already asynchronous"  # nothing frozen: the Traffic Manager is left alone too
        settings.synchronous_mode = False
        if fixed_delta != "keep":
            settings.fixed_delta_seconds = fixed_delta
        world.apply_settings(settings)
    if tm_port is not None:
        with carla_api.calling("switching the Traffic Manager on port {} to asynchronous mode"
                               .format(tm_port), where):
            client.get_trafficmanager(tm_port).set_synchronous_mode(False)
        return "switched back to asynchronous mode (the world and the Traffic Manager on port {})" \
            .format(tm_port)
    return "switched back to asynchronous mode (the world)"


def main(argv: Optional[List[str]] = None, carla_module: Any = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level="INFO", stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.fixed_delta_seconds in ("keep", "none"):
        fixed_delta = None if args.fixed_delta_seconds == "none" else "keep"
    else:
        try:
            fixed_delta = float(args.fixed_delta_seconds)
        except ValueError:
            logger.error("--fixed-delta-seconds takes a number, 'none' or 'keep'")
            return 2
    try:
        carla = carla_module if carla_module is not None else carla_api.import_carla()
        done = unfreeze(carla, args.host, args.port, args.tm_port, fixed_delta, args.timeout)
    except BridgeError as e:
        logger.error("%s", e)
        return 1
    print("{}:{}: {}".format(args.host, args.port, done), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
