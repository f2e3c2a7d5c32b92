"""The command lines the launcher runs: what a user would type in a terminal of their own (docs/launch.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from bridge.transport import LOOPBACK_HOSTS
from carla_client import registry
from launch.config import REPO_ROOT, LaunchConfig, find_input
from launch.procs import child_env  # noqa: F401  (the launcher's callers build children's env here)

#: the sensors of clients.sensors=auto without the live view: collision and lane invasion, no camera.
EVENT_SENSORS = Path(__file__).resolve().parent / "configs" / "sensors_events.json"

#: agent config keys the launcher sets itself (from its own config) on the trainer's command line.
LAUNCHER_OWNED_TRAINER_KEYS = ("endpoints", "env.curve", "env.endpoints_file")


def carla_server_argv(config: LaunchConfig, index: int) -> list[str]:
    """``CarlaUE4.sh -RenderOffScreen -carla-rpc-port=P ...`` for server ``index``.

    The arguments are the world kind's (registry): a 0.8.4 server gets ``-carla-server
    -carla-world-port=P ...``.
    """
    assert config.carla.executable, "carla_server_argv needs carla.executable"
    executable = str(find_input(config.carla.executable))
    info = registry.get(config.world_kind)
    return [executable, *info.server_argv(config.carla.rpc_port(index)), *config.carla.extra_args]


def client_argv(config: LaunchConfig, index: int, sim_python: str, host: str | None = None
                ) -> list[str]:
    """``<sim python> -m carla_client --world W --bind tcp://host:(base_port + index) ...``.

    ``host`` (default ``clients.host``): the address to listen on; beyond loopback the client gets
    ``--allow-remote`` when ``curve`` is set (carla_client itself refuses it without CURVE).
    Built-in world: client i serves the circuits ``seed + i * circuits`` onwards, so clients never
    share a circuit, with ``npc_vehicles`` NPCs.
    """
    clients = config.clients
    argv = [sim_python, "-m", clients.module, "--world", config.world_kind,
            "--bind", clients.endpoint(index, host)]
    if config.world_kind == "builtin":
        argv += ["--seed", str(clients.seed + index * clients.circuits), "--npc",
                 str(clients.npc_vehicles), "--circuits", str(clients.circuits)]
    else:
        argv += ["--seed", str(clients.seed + index)]
    flags = registry.get(config.world_kind).server_flags  # what this world kind reads
    values = {"--host": config.carla.host, "--port": str(config.carla.rpc_port(index)),
              "--tm-port": str(config.carla.tm_port + index)}
    for flag in flags:
        argv += [flag, values[flag]]
    sensors = clients.sensors
    if sensors == "auto":  # the default policy needs no camera: render one only for the live view
        sensors = None if config.view else str(EVENT_SENSORS)
    if sensors:
        argv += ["--sensors", str(find_input(sensors))]
    if config.curve:
        argv += ["--curve", curve_dir(config)]
        if (host or clients.host) not in LOOPBACK_HOSTS:
            argv.append("--allow-remote")
    return argv + list(clients.extra_args)


def curve_dir(config: LaunchConfig) -> str:
    """The configured CurveZMQ key directory as an absolute path (children run in other directories)."""
    assert config.curve, "curve_dir needs config.curve"
    return str(Path(config.curve).expanduser().resolve())


def split_trainer_overrides(overrides: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Separates ``run_name=``/``runs_dir=`` (which the launcher must know too) from the other overrides.

    Returns:
        ({"run_name": ..., "runs_dir": ...} for those given, the remaining overrides in order).
    """
    known: dict[str, str] = {}
    rest: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() in ("run_name", "runs_dir"):
            known[key.strip()] = value.strip()
        else:
            rest.append(item)
    return known, rest


def check_trainer_config(config: LaunchConfig, overrides: Sequence[str]) -> None:
    """Applies the trainer's overrides to its config file and checks the result as ``agent.train``
    will (call it when ``trainer.module`` is agent.train), so that a misspelt key fails before any
    sim, TensorBoard or run directory is started.

    Raises:
        ConfigError (a ValueError): the first unknown or ill-typed key, as agent.train words it.
    """
    from agent.config import check_config, load_config  # the trainer's own rules, not a copy

    # the endpoints are the launcher's to set (clients.*); any valid address stands in for them
    trainer_config = load_config(find_input(config.trainer.config),
                                 [*overrides, "endpoints=tcp://127.0.0.1:5556"])
    check_config(trainer_config)


def trainer_argv(config: LaunchConfig, trainer_python: str, run_name: str, runs_dir: Path,
                 endpoints: Sequence[str], overrides: Sequence[str], resume: Path | None = None,
                 endpoints_file: Path | None = None) -> list[str]:
    """``<trainer python> -m agent.train --config C --run-name R runs_dir=D endpoints=... [overrides]``.

    With ``resume``: ``-m agent.train --resume CHECKPOINT endpoints=... [overrides]`` (the run's own
    config.yaml and directory). ``env.reconnect=true`` comes before the user's overrides: a restarted
    carla_client is useless unless the env reconnects to it. ``endpoints_file``: where the placement
    writes each sim's current endpoint (a sim Ray restarted on another node moved); the envs read it
    when they reconnect (``env.endpoints_file``).
    """
    if resume is not None:
        head = ["--resume", str(resume.expanduser().resolve())]
    else:
        head = ["--config", str(find_input(config.trainer.config)), "--run-name", run_name,
                f"runs_dir={runs_dir}"]
    curve = [f"env.curve={curve_dir(config)}"] if config.curve else []
    view = ["view=true"] if config.view else []
    moves = [f"env.endpoints_file={endpoints_file}"] if endpoints_file is not None else []
    return [trainer_python, "-m", config.trainer.module, *head,
            f"endpoints={','.join(endpoints)}", "env.reconnect=true", *curve, *moves, *view,
            *overrides]


def run_dir_of(resume: Path) -> Path:
    """The run directory of ``--resume``'s argument: a run directory, or a zip in it or its checkpoints/."""
    resume = resume.expanduser().resolve()
    if resume.is_dir():
        return resume
    parent = resume.parent
    return parent.parent if parent.name == "checkpoints" else parent


def tensorboard_argv(config: LaunchConfig, trainer_python: str, logdir: Path, port: int) -> list[str]:
    """``<trainer python> -m tensorboard.main --logdir runs/<run> --host H --port P``."""
    tb = config.tensorboard
    return [trainer_python, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", tb.host,
            "--port", str(port), "--reload_interval", f"{tb.reload_interval:g}", *tb.extra_args]


def restore_async_argv(sim_python: str, host: str, port: int, tm_port: int) -> list[str]:
    """``<sim python> -m carla_client.unfreeze ...``: leaves a CARLA server asynchronous (so it
    cannot freeze) with a variable time step, its Traffic Manager too; a no-op if it is not
    synchronous. carla_client restores what it changed when stopped, but a client killed with
    SIGKILL cannot, and its restarted successor finds the world synchronous and leaves it so."""
    return [sim_python, "-m", "carla_client.unfreeze", "--host", host, "--port", str(port),
            "--tm-port", str(tm_port), "--fixed-delta-seconds", "none"]
