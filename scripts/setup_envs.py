#!/usr/bin/env python3
"""Build (or confirm) the project's virtualenvs: the sim side's (e.g. Python 3.6) and the trainer's (3.11).

    python3 scripts/setup_envs.py                 # both, under .venvs/ (a fast no-op when up to date)
    python3 scripts/setup_envs.py --with-carla-sim   # plus the CARLA 0.9.15 client venv on Python 3.7
    python3 scripts/setup_envs.py --sim-python 3.8 --venv-dir /tmp/v --only sim

Layout (default --venv-dir .venvs):
    .venvs/sim-<X.Y>/   pyzmq, msgpack, numpy pinned for that interpreter, `pip install -e .[test]`
    .venvs/sim-3.7/     (--with-carla-sim) Python 3.7, `pip install -e .[test,carla]`: the real
                        `carla==0.9.15` client most CARLA 0.9.10-0.9.15 users run; the CARLA backend's
                        tests run here too (scripts/run_tests.py)
    .venvs/trainer/     Python 3.11, `pip install -e .[train,carla,cluster,test]` (torch pinned to 2.13.0)
    .venvs/envs.json    {"sim_python": ..., "trainer_python": ..., "carla_sim_python": ..., ...}: read by
                        tests/ and the launcher

Each venv carries a stamp: a hash of setup.cfg, setup.py, pyproject.toml, the constraints file used,
the bootstrap pins and the base interpreter. When the stamp matches, nothing is run through pip.
Exact versions come from requirements/constraints-py<XY>.txt when one exists for the interpreter
(regenerate with --update-constraints).

Runs on any python3 >= 3.8; the venvs' own interpreters may be older.
"""
import argparse
import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VENV_DIR = os.path.join(REPO_ROOT, ".venvs")
CONSTRAINTS_DIR = os.path.join(REPO_ROOT, "requirements")
# Files whose content decides what gets installed; a change in any of them reinstalls.
INPUT_FILES = ("setup.cfg", "setup.py", "pyproject.toml")
STAMP_NAME = ".czb-stamp.json"
STAMP_SCHEMA = 1

SIM_EXTRAS = "test"
TRAINER_EXTRAS = "train,carla,cluster,test"
CARLA_SIM_EXTRAS = "test,carla"
DEFAULT_SIM_VERSION = "3.6"
DEFAULT_TRAINER_VERSION = "3.11"
#: the interpreter CARLA 0.9.10-0.9.15's client wheels are built for; setup.cfg's [carla] extra
#: installs carla==0.9.15 there.
DEFAULT_CARLA_SIM_VERSION = "3.7"

# pip/setuptools/wheel for interpreters whose bundled ones are too old. On 3.6: pip 21.3.1 is the last
# release and the first that installs the pinned wheels cleanly; setuptools 59.6.0 and wheel 0.37.1
# are the last for 3.6 (the venv starts with setuptools 40.6, too old for `packages =` in setup.cfg
# plus pyproject.toml builds).
BOOTSTRAP = {
    (3, 6): ["pip==21.3.1", "setuptools==59.6.0", "wheel==0.37.1"],
}
# Others: keep the bundled pip, make sure setuptools (PEP 660 editable installs) and wheel are there.
BOOTSTRAP_DEFAULT = ["setuptools>=64", "wheel"]


def log(msg):
    print("[setup_envs] " + msg, flush=True)


def is_ci():
    return os.environ.get("CI", "").lower() == "true"


# --------------------------------------------------------------------------- interpreters

def interpreter_version(python):
    """Returns (major, minor, micro) of an interpreter, or None if it does not run."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30, check=True,
        ).stdout.decode().strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return tuple(int(x) for x in out.split("."))


def pyenv_root():
    root = os.environ.get("PYENV_ROOT")
    if root:
        return root
    if shutil.which("pyenv"):
        try:
            return subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  timeout=30, check=True).stdout.decode().strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return os.path.expanduser("~/.pyenv")


def find_by_version(version):
    """Finds an interpreter for 'X.Y': the newest pyenv X.Y.*, else pythonX.Y on PATH."""
    def patch_key(path):
        m = re.search(r"/versions/\d+\.\d+\.(\d+)/", path)
        return int(m.group(1)) if m else -1

    candidates = glob.glob(os.path.join(pyenv_root(), "versions", version + ".*", "bin", "python"))
    # Only plain X.Y.Z builds (not 3.6.15-debug or virtualenvs made by pyenv-virtualenv).
    candidates = [c for c in candidates if re.search(r"/versions/\d+\.\d+\.\d+/bin/python$", c)]
    for path in sorted(candidates, key=patch_key, reverse=True):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("python" + version)


def resolve_interpreter(spec):
    """Turns '3.6' or a path into an existing interpreter path, or None."""
    if re.fullmatch(r"\d+\.\d+", spec):
        return find_by_version(spec)
    path = shutil.which(spec) or (spec if os.path.exists(spec) else None)
    return os.path.abspath(path) if path else None


def choose_python(cli_value, option, env_var, default_version):
    """``option``'s value, else ``$env_var``, else Python ``default_version`` from pyenv or PATH.

    Returns (interpreter path or None, a sentence saying where it came from).
    """
    if cli_value:
        return resolve_interpreter(cli_value), "%s %s" % (option, cli_value)
    env_value = os.environ.get(env_var)
    if env_value:
        return resolve_interpreter(env_value), "$%s=%s" % (env_var, env_value)
    return find_by_version(default_version), "pyenv / PATH lookup of Python " + default_version


def choose_sim_python(cli_value):
    """--sim-python, else $CZB_SIM_PYTHON, else Python 3.6 from pyenv (or python3.6 on PATH)."""
    return choose_python(cli_value, "--sim-python", "CZB_SIM_PYTHON", DEFAULT_SIM_VERSION)


def choose_carla_sim_python(cli_value):
    """--carla-sim-python, else $CZB_CARLA_SIM_PYTHON, else Python 3.7 from pyenv or PATH."""
    return choose_python(cli_value, "--carla-sim-python", "CZB_CARLA_SIM_PYTHON",
                         DEFAULT_CARLA_SIM_VERSION)


def choose_trainer_python(cli_value):
    """--trainer-python, else Python 3.11 from pyenv or PATH, else this interpreter if it is 3.11."""
    if cli_value:
        return resolve_interpreter(cli_value), "--trainer-python " + cli_value
    found = find_by_version(DEFAULT_TRAINER_VERSION)
    if not found and "%d.%d" % sys.version_info[:2] == DEFAULT_TRAINER_VERSION:
        found = sys.executable
    return found, "pyenv / PATH lookup of Python " + DEFAULT_TRAINER_VERSION


# --------------------------------------------------------------------------- venvs

def venv_python(venv_dir):
    return os.path.join(venv_dir, "bin", "python")


def constraints_file(version):
    return os.path.join(CONSTRAINTS_DIR, "constraints-py%d%d.txt" % version[:2])


def stamp_key(base_python, base_version, extras, constraints):
    h = hashlib.sha256()
    h.update(json.dumps([STAMP_SCHEMA, os.path.realpath(base_python), list(base_version), extras,
                         BOOTSTRAP.get(base_version[:2], BOOTSTRAP_DEFAULT)]).encode())
    for path in [os.path.join(REPO_ROOT, name) for name in INPUT_FILES] + [constraints]:
        h.update(b"\0" + path.encode() + b"\0")
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def read_stamp(venv_dir):
    try:
        with open(os.path.join(venv_dir, STAMP_NAME)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class StepFailed(Exception):
    pass


def run_logged(cmd, log_path, verbose):
    """Runs a command, appending its output to log_path (and the terminal if verbose)."""
    env = dict(os.environ)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    # Another interpreter's paths must not leak into a venv of a different Python version.
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    with open(log_path, "ab") as logf:
        logf.write(("\n$ " + " ".join(cmd) + "\n").encode())
        logf.flush()
        if verbose:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                    env=env)
            for line in proc.stdout:
                logf.write(line)
                sys.stdout.write(line.decode(errors="replace"))
            rc = proc.wait()
        else:
            rc = subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    if rc != 0:
        with open(log_path, "rb") as f:
            tail = f.read().decode(errors="replace").splitlines()[-40:]
        # The machine's pip config points at optional local indexes that may be absent: noise.
        tail = [line for line in tail if "is ignored: it is neither a file nor a directory" not in line]
        raise StepFailed("command failed (exit %d): %s\n--- last lines of %s ---\n%s"
                         % (rc, " ".join(cmd), log_path, "\n".join(tail)))


def ensure_venv(name, base_python, extras, venv_root, force=False, update_constraints=False,
                verbose=False):
    """Creates or updates venv_root/name from base_python with `pip install -e REPO[extras]`.

    Returns (venv python path, its version). Raises StepFailed.
    """
    base_version = interpreter_version(base_python)
    if base_version is None:
        raise StepFailed("interpreter %s does not run" % base_python)
    venv_dir = os.path.join(venv_root, name)
    py = venv_python(venv_dir)
    constraints = constraints_file(base_version)
    use_constraints = os.path.exists(constraints) and not update_constraints
    key = stamp_key(base_python, base_version, extras, constraints if use_constraints else "")
    label = "%s (Python %s)" % (name, ".".join(map(str, base_version)))

    venv_version = interpreter_version(py) if os.path.exists(py) else None
    if not force and venv_version == base_version and read_stamp(venv_dir).get("key") == key:
        log("%s: up to date at %s" % (label, venv_dir))
        return py, base_version

    started = time.monotonic()
    os.makedirs(os.path.join(venv_root, "logs"), exist_ok=True)
    log_path = os.path.join(venv_root, "logs", name + ".log")
    with open(log_path, "w") as f:
        f.write("# %s, %s\n" % (label, time.strftime("%Y-%m-%d %H:%M:%S")))

    if force or venv_version != base_version:
        if os.path.exists(venv_dir):
            log("%s: removing %s (%s)" % (label, venv_dir, "--force" if force else
                                          "its interpreter is missing or a different version"))
            shutil.rmtree(venv_dir)
        log("%s: creating venv from %s" % (label, base_python))
        run_logged([base_python, "-m", "venv", venv_dir], log_path, verbose)
    else:
        log("%s: updating %s (inputs changed or first run of this script)" % (label, venv_dir))

    pip = [py, "-m", "pip", "install", "--progress-bar", "off"]
    cflags = ["-c", constraints] if use_constraints else []
    bootstrap = BOOTSTRAP.get(base_version[:2], BOOTSTRAP_DEFAULT)
    if bootstrap[0].startswith("pip"):
        # An old pip (3.6's venv has 18.1) must upgrade itself before it can read modern wheels.
        log("%s: installing %s" % (label, bootstrap[0]))
        run_logged(pip + [bootstrap[0]], log_path, verbose)
        bootstrap = bootstrap[1:]
    log("%s: installing %s" % (label, " ".join(bootstrap)))
    run_logged(pip + cflags + bootstrap, log_path, verbose)
    # --no-build-isolation: build with the venv's own (pinned) setuptools instead of fetching one per
    # install; on 3.6 pip 21.3.1 then falls back to `setup.py develop` for the editable install.
    target = "%s[%s]" % (REPO_ROOT, extras)
    log("%s: pip install -e %s%s" % (label, target,
                                      "  (constraints: %s)" % os.path.relpath(constraints, REPO_ROOT)
                                      if use_constraints else ""))
    run_logged(pip + cflags + ["--no-build-isolation", "-e", target], log_path, verbose)
    if "train" in extras.split(","):
        ensure_opencv_gui(py, pip + cflags, label, log_path, verbose)
    try:
        run_logged([py, "-m", "pip", "check"], log_path, verbose)
    except StepFailed as e:
        log("%s: WARNING: pip check reports conflicts (see %s):\n%s" % (label, log_path, e))
    if update_constraints:
        write_constraints(py, constraints, label)
        key = stamp_key(base_python, base_version, extras, constraints)

    with open(os.path.join(venv_dir, STAMP_NAME), "w") as f:
        json.dump({"key": key, "base_python": base_python, "extras": extras,
                   "built": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)
    log("%s: ready in %.0f s (log: %s)" % (label, time.monotonic() - started, log_path))
    return py, base_version


def _installed(py, names):
    """{distribution: version} of those among ``names`` installed in the venv of ``py``."""
    code = ("import importlib.metadata as m, json, sys\n"
            "found = {}\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            "        found[name] = m.version(name)\n"
            "    except m.PackageNotFoundError:\n"
            "        pass\n"
            "print(json.dumps(found))")
    out = subprocess.check_output([py, "-c", code] + list(names), cwd=REPO_ROOT)
    return json.loads(out.decode())


def ensure_opencv_gui(py, pip, label, log_path, verbose):
    """Leaves the trainer venv with exactly one OpenCV, the GUI build if it imports here.

    The live view (agent/view.py) needs opencv-python; its Qt build needs the system's libGL
    (Debian: libgl1). A venv made before the switch also holds opencv-python-headless: both ship
    cv2/, so the headless one is removed and the GUI one reinstalled over its files. Where
    opencv-python cannot be imported (no libGL), opencv-python-headless replaces it: everything but
    the live view works, and the view says why it is off.
    """
    gui, headless = "opencv-python", "opencv-python-headless"
    found = _installed(py, (gui, headless))
    if gui not in found:
        return
    if headless in found:
        log("%s: replacing %s by %s (the live view needs OpenCV's GUI)" % (label, headless, gui))
        run_logged([py, "-m", "pip", "uninstall", "-y", headless], log_path, verbose)
        run_logged(pip + ["--force-reinstall", "--no-deps", "%s==%s" % (gui, found[gui])], log_path,
                   verbose)
    probe = subprocess.call([py, "-c", "import cv2"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if probe != 0:
        log("%s: WARNING: %s does not import here (missing libGL? Debian: apt-get install libgl1); "
            "installing %s instead: no live view window" % (label, gui, headless))
        run_logged([py, "-m", "pip", "uninstall", "-y", gui], log_path, verbose)
        run_logged(pip + ["--no-deps", "%s==%s" % (headless, found[gui])], log_path, verbose)


def write_constraints(py, path, label):
    """Freezes a venv's versions (minus pip and the project itself) into a constraints file."""
    out = subprocess.run([py, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                         stdout=subprocess.PIPE, check=True).stdout.decode()
    lines = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.lower().startswith(("pip==", "carla-zmq-bridge")):
            continue
        # torch==2.13.0+cpu -> torch==2.13.0: `==2.13.0` still matches the local +cpu wheel.
        lines.append(re.sub(r"\+[A-Za-z0-9.]+$", "", line))
    version = interpreter_version(py)
    header = ("# Exact versions for Python %d.%d venvs (%s), written by scripts/setup_envs.py "
              "--update-constraints.\n# Used as pip constraints (-c): they pin versions, they add no "
              "packages.\n" % (version[0], version[1], label.split(" ")[0]))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(header + "\n".join(sorted(lines, key=str.lower)) + "\n")
    log("%s: wrote %s" % (label, os.path.relpath(path, REPO_ROOT)))


def write_envs_json(venv_root, updates):
    """Merges updates into venv_root/envs.json (rewritten only when something changed)."""
    path = os.path.join(venv_root, "envs.json")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {}
    new = dict(data, **updates)
    new["repo_root"] = REPO_ROOT
    if new != data:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(new, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    return path


@contextlib.contextmanager
def locked(venv_root):
    """One setup at a time per venv dir (a test run and a launcher may both call this)."""
    os.makedirs(venv_root, exist_ok=True)
    with open(os.path.join(venv_root, ".lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another setup_envs run on %s ..." % venv_root)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


# --------------------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sim-python", metavar="PATH|X.Y",
                   help="interpreter for the sim-side venv (default: $CZB_SIM_PYTHON, else Python %s "
                        "from pyenv or PATH)" % DEFAULT_SIM_VERSION)
    p.add_argument("--trainer-python", metavar="PATH|X.Y",
                   help="interpreter for the trainer venv (default: Python %s from pyenv or PATH)"
                        % DEFAULT_TRAINER_VERSION)
    p.add_argument("--venv-dir", metavar="DIR", default=DEFAULT_VENV_DIR,
                   help="where the venvs and envs.json go (default: %s)"
                        % os.path.relpath(DEFAULT_VENV_DIR, os.getcwd()))
    p.add_argument("--carla-sim-python", metavar="PATH|X.Y",
                   help="interpreter for the CARLA client venv built by --with-carla-sim (default: "
                        "$CZB_CARLA_SIM_PYTHON, else Python %s from pyenv or PATH)"
                        % DEFAULT_CARLA_SIM_VERSION)
    p.add_argument("--with-carla-sim", action="store_true",
                   help="also build the sim venv with the real CARLA client (carla==0.9.15 on Python "
                        "%s) that the CARLA backend's tests run under; scripts/run_tests.py asks for it"
                        % DEFAULT_CARLA_SIM_VERSION)
    p.add_argument("--only", choices=("sim", "trainer", "carla-sim"),
                   help="build just one venv")
    p.add_argument("--force", action="store_true", help="delete and rebuild the venvs")
    p.add_argument("--update-constraints", action="store_true",
                   help="install without requirements/constraints-py*.txt, then rewrite them from the "
                        "result (add --force to start from empty venvs and take the newest releases)")
    p.add_argument("-v", "--verbose", action="store_true", help="show pip's output, not just its log")
    return p.parse_args(argv)


def build_carla_sim(args, venv_root):
    """Builds .venvs/sim-3.7 with the real carla==0.9.15 client; returns the failures to report.

    Outside CI a missing interpreter or a failed build is a warning (the CARLA backend's 3.7 test
    run is then skipped, visibly); under CI=true both are failures.
    """
    base, source = choose_carla_sim_python(args.carla_sim_python)
    version = interpreter_version(base) if base else None
    problem = None
    if version is None:
        problem = ("no interpreter for the CARLA client venv found (%s): install Python %s (e.g. "
                   "`pyenv install %s.16`) or pass --carla-sim-python PATH"
                   % (source, DEFAULT_CARLA_SIM_VERSION, DEFAULT_CARLA_SIM_VERSION))
    else:
        try:
            py, ver = ensure_venv("sim-%d.%d" % version[:2], base, CARLA_SIM_EXTRAS, venv_root,
                                  args.force, args.update_constraints, args.verbose)
            carla_version = subprocess.run(
                [py, "-m", "pip", "show", "carla"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                timeout=120).stdout.decode()
            match = re.search(r"^Version:\s*(\S+)", carla_version, re.M)
            write_envs_json(venv_root, {"carla_sim_python": py,
                                        "carla_sim_version": ".".join(map(str, ver)),
                                        "carla_sim_carla": match.group(1) if match else "unknown"})
        except (StepFailed, OSError, subprocess.SubprocessError) as e:
            problem = "CARLA client venv: %s" % e
    if problem is None:
        return []
    if is_ci() or args.only == "carla-sim" or args.carla_sim_python:
        return [problem]
    log("WARNING: " + problem + ". The CARLA backend's tests under the real carla 0.9.15 client "
        "will be skipped.")
    return []


def main(argv=None):
    args = parse_args(argv)
    venv_root = os.path.abspath(args.venv_dir)
    started = time.monotonic()
    failures = []
    with locked(venv_root):
        if args.only in (None, "sim"):
            base, source = choose_sim_python(args.sim_python)
            if not base:
                msg = ("no sim-side interpreter found (%s). Install Python %s (e.g. `pyenv install %s.15`), "
                       "or pass --sim-python PATH / set CZB_SIM_PYTHON." % (source, DEFAULT_SIM_VERSION,
                                                                           DEFAULT_SIM_VERSION))
                if is_ci() or args.sim_python or os.environ.get("CZB_SIM_PYTHON"):
                    failures.append(msg)
                else:
                    log("WARNING: " + msg + " Skipping the sim venv; cross-version tests will be skipped.")
            else:
                version = interpreter_version(base)
                if version is None or version < (3, 6):
                    failures.append("sim interpreter %s (%s) is not Python >= 3.6" % (base, source))
                else:
                    try:
                        # a sim side on 3.7 shares .venvs/sim-3.7 with the CARLA client venv:
                        # one set of extras for both, or each build would undo the other's
                        extras = (CARLA_SIM_EXTRAS if "%d.%d" % version[:2] == DEFAULT_CARLA_SIM_VERSION
                                  else SIM_EXTRAS)
                        py, ver = ensure_venv("sim-%d.%d" % version[:2], base, extras, venv_root,
                                              args.force, args.update_constraints, args.verbose)
                        write_envs_json(venv_root, {"sim_python": py,
                                                    "sim_version": ".".join(map(str, ver))})
                    except StepFailed as e:
                        failures.append("sim venv: %s" % e)
        if args.only == "carla-sim" or (args.only is None and args.with_carla_sim):
            failures += build_carla_sim(args, venv_root)
        if args.only in (None, "trainer"):
            base, source = choose_trainer_python(args.trainer_python)
            version = interpreter_version(base) if base else None
            if version is None:
                failures.append("no trainer interpreter found (%s): install Python %s or pass "
                                "--trainer-python PATH" % (source, DEFAULT_TRAINER_VERSION))
            elif version < (3, 9):
                failures.append("trainer interpreter %s is Python %d.%d; the trainer needs >= 3.9 "
                                "(3.11 is what is tested)" % ((base,) + version[:2]))
            else:
                if "%d.%d" % version[:2] != DEFAULT_TRAINER_VERSION:
                    log("WARNING: trainer on Python %d.%d: only %s is tested, and torch==2.13.0 may be "
                        "a large download there" % (version[:2] + (DEFAULT_TRAINER_VERSION,)))
                try:
                    py, ver = ensure_venv("trainer", base, TRAINER_EXTRAS, venv_root, args.force,
                                          args.update_constraints, args.verbose)
                    write_envs_json(venv_root, {"trainer_python": py,
                                                "trainer_version": ".".join(map(str, ver))})
                except StepFailed as e:
                    failures.append("trainer venv: %s" % e)
        envs_path = write_envs_json(venv_root, {})
    if failures:
        for msg in failures:
            log("ERROR: " + msg)
        return 1
    log("done in %.1f s; interpreters recorded in %s" % (time.monotonic() - started, envs_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
