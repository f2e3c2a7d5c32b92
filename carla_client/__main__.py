"""Command line: ``python -m carla_client --world builtin|carla --bind tcp://127.0.0.1:5556 ...``."""
import argparse
import logging
import signal
import sys
from typing import Any, List, NamedTuple, Optional

from bridge import protocol
from bridge.errors import BridgeError
from bridge.server import BridgeServer
from carla_client.backend import WorldBackend
from carla_client.sensors import load_sensors
from carla_client.serve import WorldSessionHandler

logger = logging.getLogger("carla_client")


class ClientConfig(NamedTuple):
    """The parsed command line, frozen."""

    world: str
    bind: str
    allow_remote: bool
    host: str
    port: int
    tm_port: int
    sensors: Optional[str]
    seed: int
    tick: float
    carla_timeout: float
    npc_vehicles: int
    circuits: int
    shm: bool
    idle_timeout: float
    max_snapshots: int
    log_level: str


def parse_args(argv: Optional[List[str]] = None) -> ClientConfig:
    parser = argparse.ArgumentParser(
        prog="python -m carla_client",
        description="Serve a driving world (the built-in simulator or a CARLA server) to a trainer "
                    "over the carla-zmq-bridge protocol, in synchronous lockstep.")
    arg = parser.add_argument
    arg("--world", choices=("builtin", "carla"), default="builtin",
        help="which world to serve (default: builtin)")
    arg("--bind", metavar="ENDPOINT", default=protocol.DEFAULT_ENDPOINT,
        help="address to listen on (default: %(default)s)")
    arg("--allow-remote", action="store_true",
        help="permit binding a non-loopback address; the bridge has no authentication "
             "(default: off)")
    arg("--host", metavar="H", default="localhost",
        help="CARLA server host, --world carla only (default: %(default)s)")
    arg("--port", metavar="P", type=int, default=2000,
        help="CARLA server RPC port (default: %(default)s)")
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
    arg("--no-shm", dest="shm", action="store_false",
        help="never offer the /dev/shm fast path (default: offered to same-host trainers)")
    arg("--idle-timeout", metavar="SECONDS", type=float, default=60.0,
        help="end a session after this much silence when the trainer sends no heartbeats "
             "(default: %(default)s)")
    arg("--max-snapshots", metavar="N", type=int, default=protocol.DEFAULT_MAX_SNAPSHOTS,
        help="snapshot tokens kept per session; one more drops the oldest (default: %(default)s)")
    arg("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="(default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.tick > 0:
        parser.error("--tick must be positive")
    if args.circuits < 1:
        parser.error("--circuits must be at least 1")
    if args.max_snapshots < 1:
        parser.error("--max-snapshots must be at least 1")
    return ClientConfig(**vars(args))


def make_backend(config: ClientConfig) -> WorldBackend:
    """Builds the configured world; CARLA's module is imported only when asked for."""
    sensors = load_sensors(config.sensors)
    if config.world == "builtin":
        from carla_client.builtin import BuiltinWorld
        return BuiltinWorld(sensors=sensors, tick_seconds=config.tick, seed=config.seed,
                            npc_vehicles=config.npc_vehicles, circuits=config.circuits)
    from carla_client.carla_backend import CarlaWorld
    return CarlaWorld(host=config.host, port=config.port, sensors=sensors,
                      tick_seconds=config.tick, tm_port=config.tm_port,
                      timeout=config.carla_timeout, seed=config.seed)


#: signals that end the process through the same restore path as SIGTERM (each where it exists):
#: SIGHUP when the terminal or SSH session closes, SIGQUIT (Ctrl-backslash), and SIGBREAK, which is how
#: Windows delivers the CTRL_BREAK_EVENT the launcher sends instead of TerminateProcess.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGBREAK")


def install_stop_handlers(handler: Any) -> List[int]:
    """Routes every stop signal this platform has to ``handler``; returns the signal numbers."""
    installed = []
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, handler)
            installed.append(int(number))
    return installed


class _StopFlag(object):
    """Set by any of STOP_SIGNALS; the serve loop checks it between requests."""

    def __init__(self) -> None:
        self.signal = None  # type: Optional[int]

    def __call__(self) -> bool:
        return self.signal is not None

    def set(self, signum: int, frame: object) -> None:
        self.signal = signum


def main(argv: Optional[List[str]] = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = _StopFlag()
    install_stop_handlers(stop.set)
    try:
        backend = make_backend(config)
    except BridgeError as e:
        logger.error("%s", e)
        return 2
    try:
        with backend, BridgeServer(WorldSessionHandler(backend), bind=config.bind,
                                   allow_remote=config.allow_remote, use_shm=config.shm,
                                   idle_timeout=config.idle_timeout,
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
