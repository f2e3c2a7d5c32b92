"""``python -m carla_client.carla084_server --port P [--seed N]``: a CARLA 0.8.4-compatible server.

Serves the built-in world over the 0.8.4 protocol on ports P (world), P+1 (stream) and P+2
(control), so unmodified 0.8.4 client programs (and ``--world carla084``) run without Unreal Engine.
See docs/carla084.md.
"""
import argparse
import logging
import sys
from typing import List, Optional

from bridge.errors import BridgeError
from carla_client.carla084.ini import ParsedIni
from carla_client.carla084.server import Carla084Server
from carla_client.signals import StopFlag

logger = logging.getLogger("carla_client.carla084_server")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m carla_client.carla084_server",
        description="A CARLA 0.8.4-compatible server on the built-in world (ports P, P+1, P+2).")
    arg = parser.add_argument
    arg("--port", metavar="P", type=int, default=2000,
        help="world port; the stream and control ports are P+1 and P+2 (default: %(default)s)")
    arg("--seed", metavar="N", type=int, default=0,
        help="world seed: the circuit, sensor ids, NPC placement (default: %(default)s)")
    arg("--host", metavar="ADDR", default="127.0.0.1",
        help="address to listen on; the protocol has no authentication (default: %(default)s)")
    arg("--server-timeout", metavar="MS", type=int, default=None,
        help="ServerTimeOut in milliseconds (default: the settings file's, else 10000)")
    arg("--carla-settings", metavar="FILE", default=None,
        help="the server's own settings file, as 0.8.4's -carla-settings=FILE: [CARLA/Server] "
             "ServerTimeOut is read from it (default: none)")
    arg("--fps", metavar="N", type=float, default=20.0,
        help="frames per simulated second, as 0.8.4's -benchmark -fps=N (default: %(default)s)")
    arg("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="(default: %(default)s)")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65533:
        parser.error("--port must leave room for P+2 below 65536")
    if not args.fps > 0:
        parser.error("--fps must be positive")
    return args


def server_timeout_ms(args: argparse.Namespace) -> int:
    """--server-timeout, else ServerTimeOut of --carla-settings, else 0.8.4's default 10000."""
    if args.server_timeout is not None:
        return args.server_timeout
    if args.carla_settings:
        with open(args.carla_settings) as f:
            return ParsedIni(f.read()).get("CARLA/Server", "ServerTimeOut", 10000, int)
    return 10000


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = StopFlag().install()
    try:
        timeout_ms = server_timeout_ms(args)
        with Carla084Server(args.port, seed=args.seed, host=args.host,
                            server_timeout=timeout_ms / 1000.0, tick_seconds=1.0 / args.fps,
                            should_stop=stop) as server:
            logger.info("CARLA 0.8.4-compatible server on %s ports %d-%d, ServerTimeOut %d ms, "
                        "%g fps, seed %d", args.host, args.port, args.port + 2, timeout_ms,
                        args.fps, args.seed)
            print("ready carla084 {}:{}".format(args.host, args.port), flush=True)
            server.serve()
    except (BridgeError, OSError) as e:
        logger.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
