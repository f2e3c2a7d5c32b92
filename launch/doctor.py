"""``python -m launch doctor``: interpreters, packages, ports, CARLA, a bridge ping; each failure says a fix."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from bridge.keys import check_key_directory, client_public_keys
from carla_client import registry
from launch import commands
from launch.config import LaunchConfig, find_input, resolve_interpreters
from launch.interpreters import SETUP_HINT, read_envs
from launch.procs import (ManagedProcess, NotReady, any_free_port, describe_exit, first_free_port,
                          port_is_free, wait_bridge, wait_tcp)

OK, WARN, FAIL = "ok", "warn", "FAIL"

SIM_MODULES = ("zmq", "msgpack", "numpy", "bridge", "carla_client")
TRAINER_MODULES = ("torch", "stable_baselines3", "gymnasium", "cv2", "tensorboard", "yaml", "zmq",
                   "msgpack", "bridge", "agent")

# Runs under any interpreter down to 3.6: imports each module named on the command line, prints JSON.
_IMPORT_PROBE = r"""
import importlib, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
        found[name] = {"ok": True, "version": str(getattr(module, "__version__", "") or "")}
    except Exception as e:
        found[name] = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
print(json.dumps(found))
"""

_VERSION_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"

# Under the sim's interpreter, with the carla package: client and server versions (they must match).
_CARLA_PROBE = r"""
import sys, carla
client = carla.Client(sys.argv[1], int(sys.argv[2]))
client.set_timeout(float(sys.argv[3]))
print(client.get_client_version())
print(client.get_server_version())
"""


class Row(NamedTuple):
    status: str
    check: str
    detail: str
    fix: str = ""


def _run(argv: list[str], timeout: float) -> tuple[int | None, str]:
    """(exit code or None on timeout/failure to start, stdout + stderr)."""
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=commands.child_env(), timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"no answer within {timeout:g} s"
    except OSError as e:
        return None, str(e)
    return done.returncode, done.stdout.decode("utf-8", "replace").strip()


def check_interpreter(side: str, python: str | None, origin: str, minimum: tuple[int, int] | None
                      ) -> tuple[Row, bool]:
    """The interpreter's row, and whether it runs at all (the package checks need it)."""
    check = f"{side} interpreter"
    if not python:
        return Row(FAIL, check, origin, SETUP_HINT), False
    code, out = _run([python, "-c", _VERSION_PROBE], 60)
    if code != 0:
        return Row(FAIL, check, f"{python} ({origin}) does not run: {out[-200:]}",
                   SETUP_HINT + f", or set interpreters.{side}_python=PATH"), False
    version = tuple(int(v) for v in out.splitlines()[-1].split("."))
    detail = f"Python {out.splitlines()[-1]} at {python} ({origin})"
    if minimum and version[:2] < minimum:
        return Row(FAIL, check, detail, f"the {side} side needs Python >= {minimum[0]}.{minimum[1]}: "
                   + SETUP_HINT), True
    return Row(OK, check, detail), True


def check_packages(side: str, python: str, modules: tuple[str, ...], fix: str) -> list[Row]:
    code, out = _run([python, "-c", _IMPORT_PROBE, *modules], 180)
    try:
        found = json.loads(out.splitlines()[-1]) if code == 0 else None
    except (ValueError, IndexError):
        found = None
    if not isinstance(found, dict):
        return [Row(FAIL, f"{side} packages", f"the import probe failed: {out[-300:]}", fix)]
    rows = []
    for name in modules:
        result = found.get(name) or {"ok": False, "error": "not reported"}
        if result["ok"]:
            rows.append(Row(OK, f"{side}: import {name}", result.get("version") or "importable"))
        else:
            hint = fix
            if name in ("bridge", "carla_client", "agent"):
                hint = (f"{name} is this repository's package: run from the repository, or `{python} "
                        "-m pip install -e .`; the launcher puts the repository on PYTHONPATH itself")
            elif name == "carla":
                hint = ("install CARLA's Python API for this interpreter (the .egg/.whl under "
                        "PythonAPI/carla/dist of your CARLA release; `pip install carla==0.9.16` on "
                        "3.10-3.12) or use world=builtin")
            rows.append(Row(FAIL, f"{side}: import {name}", result.get("error", ""), hint))
    return rows


def check_world_needs(info: registry.BackendInfo, python: str, interpreter: Row) -> list[Row]:
    """The world kind's interpreter range and alternative client libraries (from the registry)."""
    rows = []
    version = interpreter.detail.split()[1] if interpreter.detail.startswith("Python ") else ""
    if version:
        supported = info.python_supported(tuple(int(v) for v in version.split(".")))
        rows.append(Row(OK if supported else FAIL, f"world {info.name}: sim Python",
                        f"{version}; the backend supports {info.python_range()}",
                        f"build the sim venv with a supported interpreter: `python3 "
                        f"scripts/setup_envs.py --sim-python X.Y`"))
    for group in info.requires_any:
        found = check_packages("sim", python, group, SETUP_HINT)
        usable = [r.check.split()[-1] for r in found if r.status == OK]
        detail = f"usable: {', '.join(usable)}" if usable else "none of " + ", ".join(group)
        rows.append(Row(OK if usable else FAIL, f"world {info.name}: one of {', '.join(group)}",
                        detail, SETUP_HINT))
    return rows


def check_carla_clients(interpreters: list[tuple[str, str]], need_carla: str | None) -> list[Row]:
    """One row per (label, python): the CARLA client version that interpreter imports, if any.

    Only ``need_carla`` (the sim side's label when world=carla) fails without one; elsewhere a
    missing client is information (the built-in world needs none).
    """
    rows = []
    for label, python in interpreters:
        check = f"{label}: CARLA client"
        code, out = _run([python, "-m", "carla_client.client_version"], 120)
        try:
            found = json.loads(out.splitlines()[-1]) if code == 0 else None
        except (ValueError, IndexError):
            found = None
        if not isinstance(found, dict):
            rows.append(Row(WARN, check, f"the version probe failed: {out[-300:]}", SETUP_HINT))
        elif found.get("carla"):
            rows.append(Row(OK, check, f"carla {found['carla']} (Python {found.get('python')})"))
        else:
            status = FAIL if label == need_carla else OK
            rows.append(Row(status, check, f"none (Python {found.get('python')}): "
                            f"{found.get('error', 'carla does not import')}",
                            "`pip install carla==0.9.16` on Python 3.10-3.12, `carla==0.9.15` on "
                            "3.7 (`python3 scripts/setup_envs.py --with-carla-sim` builds "
                            ".venvs/sim-3.7 with it)"))
    return rows


def check_ports(config: LaunchConfig) -> list[Row]:
    rows = []
    clients = config.clients
    for index, endpoint in enumerate(clients.endpoints()):
        port = clients.base_port + index
        if port_is_free(clients.host, port):
            rows.append(Row(OK, f"port {port}", f"free for carla_client-{index} ({endpoint})"))
        else:
            rows.append(Row(FAIL, f"port {port}", f"in use: carla_client-{index} cannot bind {endpoint}",
                            f"find the owner with `ss -ltnp 'sport = :{port}'` (Windows: `netstat -ano "
                            f"| findstr :{port}`) and stop it (an old carla_client?), or set "
                            "clients.base_port=PORT"))
    tb = config.tensorboard
    if tb.enabled:
        if port_is_free(tb.host, tb.port):
            rows.append(Row(OK, f"port {tb.port}", "free for TensorBoard"))
        else:
            other = first_free_port(tb.host, tb.port + 1)
            rows.append(Row(WARN, f"port {tb.port}", f"in use (an old TensorBoard?): the launcher will "
                            f"use {other} instead", f"or set tensorboard.port={other}"))
    if registry.get(config.world_kind).needs_server and config.carla.executable:
        for index in range(clients.count):
            port = config.carla.rpc_port(index)
            if port_is_free("127.0.0.1", port):
                rows.append(Row(OK, f"port {port}", f"free for CARLA server {index}"))
            else:
                rows.append(Row(FAIL, f"port {port}", f"in use, but the launcher starts CARLA server "
                                f"{index} there", "stop the CARLA server left running (`pkill -f "
                                "CarlaUE4` only if it is yours), or set carla.port=PORT"))
    return rows


def check_curve(config: LaunchConfig, sim_python: str | None) -> list[Row]:
    """The CurveZMQ key directory (``curve: DIR``): both key pairs readable, secrets private, and
    libzmq with CURVE under both interpreters."""
    loopback = config.clients.host in ("127.0.0.1", "localhost", "::1")
    if not config.curve:
        if loopback:
            return []
        return [Row(FAIL, "curve keys", f"carla_client binds {config.clients.host}, beyond this "
                    "host, without CurveZMQ", "make keys with `python -m bridge.keys DIR` and set "
                    "curve=DIR, or keep clients.host=127.0.0.1 and use an SSH tunnel")]
    directory = commands.curve_dir(config)
    rows = []
    for side in ("server", "client"):
        problems = check_key_directory(directory, side)
        rows.append(Row(FAIL, f"curve {side} keys", "; ".join(problems),
                        f"make keys with `python -m bridge.keys {directory}`") if problems else
                    Row(OK, f"curve {side} keys", f"{directory} ({side}.key_secret private)"))
    if rows[0].status == OK:
        rows[0] = rows[0]._replace(detail=rows[0].detail + f"; {len(client_public_keys(directory))} "
                                   "client key(s) accepted")
    if sim_python:
        code, out = _run([sim_python, "-c", "import zmq; print(zmq.has('curve'))"], 30)
        if code != 0 or out.strip() != "True":
            rows.append(Row(FAIL, "sim: curve support", f"libzmq under {sim_python} lacks CURVE "
                            f"({out.strip()[-200:]})", SETUP_HINT))
    return rows


def check_carla(config: LaunchConfig, sim_python: str | None, sim_has_carla: bool) -> list[Row]:
    carla = config.carla
    info = registry.get(config.world_kind)
    if not info.needs_server:
        return [Row(OK, "CARLA server", f"not needed: world is {info.name} (set carla.executable or "
                    "world=carla to use CARLA)")]
    if carla.executable:
        path = find_input(carla.executable)
        if not path.is_file() or not os.access(path, os.X_OK):
            return [Row(FAIL, "CARLA server", f"carla.executable {path} is not an executable file",
                        "point carla.executable at CarlaUE4.sh (Linux) or CarlaUE4.exe (Windows) of "
                        "your CARLA install")]
        return [Row(OK, "CARLA server", f"{path}: started by the launcher on port(s) "
                    f"{', '.join(str(carla.rpc_port(i)) for i in range(config.clients.count))}")]
    rows = []
    for index in range(config.clients.count):
        port = carla.rpc_port(index)
        try:
            wait_tcp(carla.host, port, time.monotonic() + 3.0)
        except NotReady:
            rows.append(Row(FAIL, f"CARLA server {carla.host}:{port}", "no answer",
                            f"start it: {info.start_hint(port)}; on "
                            f"another host open TCP ports {port}-{port + 2} in its firewall; or set "
                            "carla.executable to let the launcher start it"))
            continue
        detail, status, fix = "accepts TCP connections", OK, ""
        if sim_python and sim_has_carla and info.name == "carla":  # the 0.9 RPC version probe
            code, out = _run([sim_python, "-c", _CARLA_PROBE, carla.host, str(port), "10"], 60)
            lines = out.splitlines()
            if code == 0 and len(lines) >= 2:
                client_v, server_v = lines[-2].strip(), lines[-1].strip()
                detail = f"server {server_v}, client library {client_v}"
                if client_v != server_v:
                    status, fix = FAIL, ("install the carla Python package of the server's version on "
                                         "the sim side (a mismatch fails in odd ways)")
            else:
                status, detail = FAIL, f"the RPC handshake failed: {out[-300:]}"
                fix = ("is it really a CARLA server? Is it still loading (wait a minute)? Is it frozen "
                       "in synchronous mode by a crashed client (restart it)?")
        rows.append(Row(status, f"CARLA server {carla.host}:{port}", detail, fix))
    return rows


def _round_trips(endpoint: str, count: int) -> list[float]:
    """Seconds per ping over one connection (the first, connecting ping is not counted)."""
    from bridge.client import BridgeClient

    with BridgeClient(endpoint, timeout=5.0, heartbeat_seconds=0) as client:
        client.ping()
        times = []
        for _ in range(count):
            started = time.perf_counter()
            client.ping()
            times.append(time.perf_counter() - started)
    return times


def check_bridge(sim_python: str, module: str = "carla_client") -> list[Row]:
    """Starts a temporary built-in carla_client under the sim's Python, pings it, stops it."""
    from bridge.errors import BridgeError
    from bridge.protocol import PROTOCOL_VERSION

    port = any_free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="launch-doctor-") as tmp:
        process = ManagedProcess("doctor-carla_client", [sim_python, "-m", module, "--world",
                                                         "builtin", "--bind", endpoint],
                                 Path(tmp) / "carla_client.log", env=commands.child_env())
        started = time.monotonic()
        process.start()
        try:
            try:
                reply, _ = wait_bridge(endpoint, started + 60, process)
                startup = time.monotonic() - started
            except NotReady as e:
                return [Row(FAIL, "bridge ping", f"a built-in carla_client on {endpoint}: {e}",
                            "fix the sim side's rows above first; run the same command by hand to "
                            f"see its error: {sim_python} -m {module} --world builtin --bind "
                            f"{endpoint}")]
            times = _round_trips(endpoint, 20)
        except BridgeError as e:
            return [Row(FAIL, "bridge ping", f"{endpoint} answered once, then: {e}",
                        "look for errors in the sim side's output: run the same command by hand")]
        finally:
            code = process.stop(timeout=10)
    version = tuple(reply.get("protocol") or ())
    sim = reply.get("sim") or {}
    rtt = statistics.median(times) * 1000
    detail = (f"{sim.get('name')} {sim.get('version')}, protocol {'.'.join(map(str, version))}; "
              f"round trip {rtt:.2f} ms (median of 20); started in {startup:.1f} s, exited "
              f"{describe_exit(code)}")
    if not version or version[0] != PROTOCOL_VERSION[0]:
        return [Row(FAIL, "bridge ping", detail + f"; the trainer speaks {PROTOCOL_VERSION[0]}."
                    f"{PROTOCOL_VERSION[1]}", "both sides must run this repository's bridge/ at the "
                    "same major protocol version: update the older checkout")]
    return [Row(OK, "bridge ping", detail)]


def diagnose(config: LaunchConfig, launcher_python: str, ping: bool = True) -> list[Row]:
    sim, sim_from, trainer, trainer_from = resolve_interpreters(config, launcher_python)
    rows: list[Row] = []
    sim_row, sim_runs = check_interpreter("sim", sim, sim_from, None)
    trainer_row, trainer_runs = check_interpreter("trainer", trainer, trainer_from, (3, 9))
    rows += [sim_row, trainer_row]
    sim_has_carla = False
    if sim_runs:
        info = registry.get(config.world_kind)
        sim_rows = check_packages("sim", sim, SIM_MODULES + info.requires, SETUP_HINT)
        sim_has_carla = any(r.check == "sim: import carla" and r.status == OK for r in sim_rows)
        rows += sim_rows + check_world_needs(info, sim, sim_row)
    if trainer_runs:
        rows += check_packages("trainer", trainer, TRAINER_MODULES,
                               SETUP_HINT + " (the trainer venv has the [train] extra)")
    probed = [("sim", sim)] if sim_runs else []
    probed += [("trainer", trainer)] if trainer_runs else []
    extra = read_envs().get("carla_sim_python")
    if extra and os.access(extra, os.X_OK) and extra not in (sim, trainer):
        probed.append(("CARLA sim venv", extra))
    rows += check_carla_clients(probed, "sim" if config.world_kind == "carla" else None)
    rows += check_ports(config)
    rows += check_curve(config, sim if sim_runs else None)
    rows += check_carla(config, sim if sim_runs else None, sim_has_carla)
    if ping:
        if sim_runs:
            rows += check_bridge(sim, config.clients.module)
        else:
            rows.append(Row(FAIL, "bridge ping", "skipped: no working sim interpreter", SETUP_HINT))
    return rows


def format_rows(rows: list[Row]) -> str:
    width = max(len(r.check) for r in rows)
    lines = []
    indent = " " * (width + 9)
    for row in rows:
        detail = row.detail.replace("\n", "\n" + indent)
        lines.append(f"[{row.status:>4}] {row.check:<{width}}  {detail}")
        if row.fix and row.status != OK:
            lines.append(f"{indent}fix: {row.fix}")
    return "\n".join(lines)


def run_doctor(config: LaunchConfig, ping: bool = True, launcher_python: str | None = None) -> int:
    """Prints the table; 1 if any row failed, else 0."""
    rows = diagnose(config, launcher_python or sys.executable, ping)
    print(format_rows(rows), flush=True)
    failed = [r for r in rows if r.status == FAIL]
    print(f"\n{len(failed)} failing check(s)" if failed else "\nall checks passed", flush=True)
    return 1 if failed else 0
