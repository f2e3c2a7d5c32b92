"""Command line: ``python -m carla_client --world builtin|carla|carla084|... --bind tcp://127.0.0.1:5556 ...``.

The world kinds and their extra options come from carla_client/registry.py.
"""
import argparse
import logging
import signal
import sys
from typing import Any, Dict, List, NamedTuple, Optional

from bridge import protocol
from bridge.errors import BridgeError
from bridge.guard import DEFAULT_MEMORY_BUDGET
from bridge.keys import load_server_keys
from bridge.server import BridgeServer
from bridge.transport import check_bind_endpoint
from carla_client import registry
from carla_client.backend import WorldBackend
from carla_client.sensors import load_sensors
from carla_client.serve import WorldSessionHandler
from carla_client.signals import STOP_SIGNALS, StopFlag, install_stop_handlers  # noqa: F401

logger = logging.getLogger("carla_client")


class ClientConfig(NamedTuple):
    """The parsed command line, frozen."""

    world: str
    bind: str
    allow_remote: bool
    curve: Optional[str]
    insecure: bool
    host: str
    port: int
    tm_port: int
    sensors: Optional[str]
    seed: int
    tick: float
    carla_timeout: float
    npc_vehicles: int
    circuits: int
    tick_latency_ms: float
    shm: bool
    idle_timeout: float
    memory_budget: int
    max_snapshots: int
    log_level: str
    #: the registered backends' own options by ``dest`` (e.g. ``legacy_client`` for carla084).
    backend_options: Dict[str, Any] = {}


def parse_args(argv: Optional[List[str]] = None) -> ClientConfig:
    parser = argparse.ArgumentParser(
        prog="python -m carla_client",
        description="Serve a driving world (the built-in simulator or a CARLA server) to a trainer "
                    "over the carla-zmq-bridge protocol, in synchronous lockstep.")
    arg = parser.add_argument
    arg("--world", choices=registry.names(), default="builtin",
        help="which world to serve: " + "; ".join(
            "{} = {}".format(n, registry.get(n).summary) for n in registry.names())
        + " (default: %(default)s)")
    arg("--bind", metavar="ENDPOINT", default=protocol.DEFAULT_ENDPOINT,
        help="address to listen on (default: %(default)s)")
    arg("--allow-remote", action="store_true",
        help="permit binding a non-loopback address; needs --curve (or --insecure) (default: off)")
    arg("--curve", metavar="DIR", default=None,
        help="require CurveZMQ: DIR/server.key_secret is this side's key, and exactly the client "
             "public keys in DIR (*.key but server.key) may connect; make keys with "
             "python -m bridge.keys DIR (default: off)")
    arg("--insecure", action="store_true",
        help="with --allow-remote, listen beyond loopback without --curve: anyone who reaches the "
             "port can drive the world (default: off)")
    arg("--host", metavar="H", default="localhost",
        help="simulator server host, --world carla/carla084 (default: %(default)s)")
    arg("--port", metavar="P", type=int, default=2000,
        help="simulator server port: CARLA 0.9 RPC port, 0.8.4 world port (default: %(default)s)")
    arg("--tm-port", metavar="P", type=int, default=8000,
        help="CARLA Traffic Manager port (default: %(default)s)")
    arg("--sensors", metavar="FILE", default=None,
        help="JSON list of sensor entries (default: 64x64 chase camera, collision, lane invasion)")
    arg("--seed", metavar="N", type=int, default=0,
        help="world seed: the built-in circuit, CARLA spawn points (default: %(default)s)")
    arg("--tick", metavar="SECONDS", type=float, default=0.05,
        help="fixed simulation time step (default: %(default)s)")
    arg("--carla-timeout", metavar="SECONDS", type=float, default=10.0,
        help="CARLA client timeout (default: %(default)s)")
    arg("--npc", dest="npc_vehicles", metavar="N", type=int, default=0,
        help="NPC vehicles in the built-in world (default: %(default)s)")
    arg("--circuits", metavar="K", type=int, default=1,
        help="built-in world: serve K circuits, world seeds SEED .. SEED+K-1, one drawn at each reset "
             "from the reset's seed (or named by the world_seed reset option) (default: %(default)s)")
    arg("--tick-latency-ms", metavar="L", type=float, default=0.0,
        help="built-in world only: every tick takes at least L ms of wall time, sleeping the rest, "
             "to emulate a CARLA server bound by GPU rendering (default: %(default)s)")
    arg("--no-shm", dest="shm", action="store_false",
        help="never offer the /dev/shm fast path (default: offered to same-host trainers)")
    arg("--idle-timeout", metavar="SECONDS", type=float, default=60.0,
        help="end a session after this much silence when the trainer sends no heartbeats "
             "(default: %(default)s)")
    arg("--memory-budget", metavar="MB", type=int, default=DEFAULT_MEMORY_BUDGET >> 20,
        help="drop peer connections (not the trainer's) once this process has grown by this many MB "
             "since it started; 0 disables the check (default: %(default)s)")
    arg("--max-snapshots", metavar="N", type=int, default=protocol.DEFAULT_MAX_SNAPSHOTS,
        help="snapshot tokens kept per session; one more drops the oldest (default: %(default)s)")
    arg("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="(default: %(default)s)")
    for option in registry.all_options():
        users = [n for n in registry.names() if option in registry.get(n).options]
        arg(option.flag, dest=option.dest, default=option.default, type=option.type,
            choices=option.choices, metavar=option.metavar,
            help="--world {} only: {}".format("/".join(users), option.help))
    args = vars(parser.parse_args(argv))
    if not args["tick"] > 0:
        parser.error("--tick must be positive")
    if args["circuits"] < 1:
        parser.error("--circuits must be at least 1")
    if not 0.0 <= args["tick_latency_ms"] <= 10000.0:
        parser.error("--tick-latency-ms must be in [0, 10000]")
    if args["tick_latency_ms"] and args["world"] != "builtin":
        parser.error("--tick-latency-ms emulates a slow tick in the built-in world; a CARLA "
                     "server's tick takes what its rendering takes")
    if args["max_snapshots"] < 1:
        parser.error("--max-snapshots must be at least 1")
    backend_options = {o.dest: args.pop(o.dest) for o in registry.all_options()}
    return ClientConfig(backend_options=backend_options, **args)


def check_config(config: ClientConfig) -> None:
    """Everything that can be checked before a world is built or a port bound.

    Raises:
        BridgeError: one clear sentence about the first bad setting.
    """
    check_bind_endpoint(config.bind, config.allow_remote, authenticated=config.curve is not None,
                        insecure=config.insecure)
    for name, port in (("--port", config.port), ("--tm-port", config.tm_port)):
        if not 1 <= port <= 65535:
            raise BridgeError("{} {} is outside 1-65535".format(name, port))
    for name, seconds in (("--idle-timeout", config.idle_timeout),
                          ("--carla-timeout", config.carla_timeout)):
        if not seconds > 0:  # also catches NaN
            raise BridgeError("{} must be a positive number of seconds, got {}".format(name, seconds))
    if config.memory_budget < 0:
        raise BridgeError("--memory-budget must be 0 (off) or a positive number of MB")
    if config.npc_vehicles < 0:
        raise BridgeError("--npc must be 0 or more")
    if config.curve is not None:
        load_server_keys(config.curve)


def make_backend(config: ClientConfig) -> WorldBackend:
    """Builds the configured world through the registry (a backend is imported only when asked for)."""
    return registry.get(config.world).build(config, load_sensors(config.sensors))


def main(argv: Optional[List[str]] = None) -> int:
    config = parse_args(argv)
    try:
        check_config(config)
    except BridgeError as e:  # one line, no traceback: a configuration mistake
        print("python -m carla_client: error: {}".format(e), file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = StopFlag().install()  # the serve loop checks it between requests
    try:
        backend = make_backend(config)
    except BridgeError as e:
        logger.error("%s", e)
        return 2
    try:
        with backend, BridgeServer(WorldSessionHandler(backend), bind=config.bind,
                                   allow_remote=config.allow_remote, use_shm=config.shm,
                                   idle_timeout=config.idle_timeout,
                                   memory_budget=config.memory_budget << 20, curve=config.curve,
                                   insecure=config.insecure,
                                   max_snapshots=config.max_snapshots) as server:
            logger.info("serving the %s world (%s) on %s; protocol %s; waiting for a trainer",
                        backend.name, backend.version, server.endpoint, protocol.version_string())
            # One machine-readable line on stdout: supervisors learn the bound port (--bind ...:0).
            print("ready {} python {}".format(server.endpoint, sys.version.split()[0]), flush=True)
            server.serve(should_stop=stop)
    except BridgeError as e:
        logger.error("%s", e)
        return 2
    logger.info("stopped by %s; world restored", signal.Signals(stop.signal).name
                if stop.signal else "request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
