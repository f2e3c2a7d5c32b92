#!/usr/bin/env python3
"""Run the whole test suite: set up the venvs if needed, then pytest under three interpreters.

    python3 scripts/run_tests.py [pytest args...]

1. scripts/setup_envs.py --with-carla-sim (a fast no-op when the venvs are up to date).
2. The sim side's run: tests/both/ and tests/sim/ under the sim venv's Python (e.g. 3.6).
   Collecting no test here is fine (exit 5 counts as success).
3. The CARLA client run: tests/carla/ (the CARLA backend's whole suite) under .venvs/sim-3.7's
   Python 3.7 with the real carla 0.9.15 client, the pairing most CARLA 0.9.10-0.9.15 users run.
   Collecting no test here is fine.
4. The main run: tests/ (minus tests/sim/) under the trainer venv's Python 3.11, which runs
   tests/carla/ again with carla 0.9.16. Collecting no test here is a failure.

Extra arguments go to every pytest run. Exits non-zero if setup or any run fails. Under CI=true a
missing sim or CARLA-client interpreter is a failure, not a skip. Runs on any python3 >= 3.8.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_SCRIPT = os.path.join(REPO_ROOT, "scripts", "setup_envs.py")
BOTH_DIR = os.path.join("tests", "both")
SIM_DIR = os.path.join("tests", "sim")
CARLA_DIR = os.path.join("tests", "carla")
PYTEST_NO_TESTS = 5
# A backstop per pytest run, far above the per-test pytest-timeout, below CI's 90 minutes.
DEFAULT_RUN_TIMEOUT = 35 * 60


def log(msg):
    print("[run_tests] " + msg, flush=True)


def is_ci():
    return os.environ.get("CI", "").lower() == "true"


def run_pytest(label, python, paths, extra_args, env, timeout):
    """Runs pytest; returns (exit code, counts dict or None)."""
    fd, junit = tempfile.mkstemp(prefix="czb-junit-", suffix=".xml")
    os.close(fd)
    cmd = [python, "-m", "pytest"] + paths + ["--junitxml", junit] + extra_args
    log("%s: %s" % (label, " ".join(cmd)))
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env)
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log("%s: still running after %d s: interrupting it" % (label, timeout))
        # SIGINT first: pytest then runs fixture teardown, which stops the child processes it started.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        rc = 124
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    counts = read_junit(junit)
    os.unlink(junit)
    log("%s: pytest exit code %d after %.0f s" % (label, rc, time.monotonic() - started))
    return rc, counts


def read_junit(path):
    """Sums pytest's JUnit XML into {"passed", "failed", "skipped"}; None if it is missing or unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = failed = skipped = 0
    for suite in suites:
        total += int(suite.get("tests", 0))
        failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skipped += int(suite.get("skipped", 0))
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def missing_interpreter(label, problem, consequence):
    """A run whose interpreter is missing: a failed result under CI=true, else a warning (no result)."""
    if is_ci():
        log("FAILED: %s: %s (CI=true)" % (label, problem))
        return [(label, False, None)]
    log("WARNING: %s: %s; %s" % (label, problem, consequence))
    return []


def split_paths(pytest_args):
    """Separates test paths (tests/x.py, tests/x.py::test_y) from the other pytest arguments."""
    paths, options = [], []
    for arg in pytest_args:
        is_path = not arg.startswith("-") and os.path.exists(os.path.join(REPO_ROOT, arg.split("::")[0]))
        (paths if is_path else options).append(arg)
    return paths, options


def under(path, directory):
    path = os.path.normpath(path.split("::")[0])
    return path == directory or path.startswith(directory + os.sep)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                usage="%(prog)s [options] [pytest args...]")
    p.add_argument("--no-setup", action="store_true", help="skip scripts/setup_envs.py")
    p.add_argument("--venv-dir", metavar="DIR", help="passed to setup_envs.py (default: .venvs)")
    p.add_argument("--skip-sim", action="store_true",
                   help="skip the runs under the sim and CARLA-client interpreters")
    p.add_argument("--run-timeout", type=int, default=DEFAULT_RUN_TIMEOUT, metavar="S",
                   help="interrupt a pytest run after S seconds (default: %d)" % DEFAULT_RUN_TIMEOUT)
    return p.parse_known_args(argv)


def main(argv=None):
    args, pytest_args = parse_args(argv)
    # Explicit test paths go to the run(s) they belong to: tests/both/ to both, tests/sim/ to the sim run.
    explicit_paths, pytest_args = split_paths(pytest_args)
    venv_dir = os.path.abspath(args.venv_dir) if args.venv_dir else os.path.join(REPO_ROOT, ".venvs")
    envs_json = os.path.join(venv_dir, "envs.json")

    if not args.no_setup:
        cmd = [sys.executable, SETUP_SCRIPT, "--venv-dir", venv_dir, "--with-carla-sim"]
        if subprocess.call(cmd, cwd=REPO_ROOT) != 0:
            log("FAILED: scripts/setup_envs.py (see its errors above)")
            return 1
    try:
        with open(envs_json) as f:
            envs = json.load(f)
    except (OSError, ValueError) as e:
        log("FAILED: cannot read %s (%s): run scripts/setup_envs.py" % (envs_json, e))
        return 1

    env = dict(os.environ)
    env["CZB_ENVS_JSON"] = envs_json
    env.pop("PYTHONPATH", None)  # the two runs use different Python versions
    results = []  # (label, ok, counts)

    sim_python = envs.get("sim_python")
    if args.skip_sim:
        log("sim run: skipped (--skip-sim)")
    elif not sim_python or not os.path.exists(sim_python):
        results += missing_interpreter("sim run", "no sim interpreter recorded in %s" % envs_json,
                                       "cross-version tests will be skipped too")
    else:
        if explicit_paths:
            paths = [p for p in explicit_paths if under(p, BOTH_DIR) or under(p, SIM_DIR)]
        else:
            paths = [d for d in (BOTH_DIR, SIM_DIR) if os.path.isdir(os.path.join(REPO_ROOT, d))]
        label = "sim run (Python %s)" % envs.get("sim_version", "?")
        if not paths:
            log("%s: nothing to run (no tests under %s or %s selected)" % (label, BOTH_DIR, SIM_DIR))
        else:
            rc, counts = run_pytest(label, sim_python, paths, pytest_args, env, args.run_timeout)
            results.append((label, rc in (0, PYTEST_NO_TESTS), counts))

    carla_python = envs.get("carla_sim_python")
    carla_label = "CARLA client run (Python %s, carla %s)" % (envs.get("carla_sim_version", "?"),
                                                             envs.get("carla_sim_carla", "?"))
    carla_paths = ([p for p in explicit_paths if under(p, CARLA_DIR)] if explicit_paths
                   else [CARLA_DIR] if os.path.isdir(os.path.join(REPO_ROOT, CARLA_DIR)) else [])
    if args.skip_sim:
        log("CARLA client run: skipped (--skip-sim)")
    elif not carla_paths:
        log("CARLA client run: nothing to run (no tests under %s selected)" % CARLA_DIR)
    elif not carla_python or not os.path.exists(carla_python):
        results += missing_interpreter("CARLA client run", "no carla_sim_python recorded in %s"
                                       % envs_json, "the CARLA backend is tested with carla 0.9.16 only")
    else:
        rc, counts = run_pytest(carla_label, carla_python, carla_paths, pytest_args, env,
                                args.run_timeout)
        results.append((carla_label, rc in (0, PYTEST_NO_TESTS), counts))

    trainer_python = envs.get("trainer_python")
    label = "main run (Python %s)" % envs.get("trainer_version", "?")
    main_paths = [p for p in explicit_paths if not under(p, SIM_DIR)]
    if not trainer_python or not os.path.exists(trainer_python):
        log("FAILED: no trainer interpreter recorded in %s" % envs_json)
        results.append((label, False, None))
    elif explicit_paths and not main_paths:
        log("%s: nothing to run (only %s paths selected)" % (label, SIM_DIR))
    else:
        if not main_paths:
            main_paths = ["tests"]
            if os.path.isdir(os.path.join(REPO_ROOT, SIM_DIR)):
                main_paths += ["--ignore", SIM_DIR]
        rc, counts = run_pytest(label, trainer_python, main_paths, pytest_args, env, args.run_timeout)
        if rc == PYTEST_NO_TESTS:
            log("%s: no tests were collected, which counts as a failure" % label)
        results.append((label, rc == 0, counts))

    total = {"passed": 0, "failed": 0, "skipped": 0}
    for label, ok, counts in results:
        summary = ("%(passed)d passed, %(failed)d failed, %(skipped)d skipped" % counts
                   if counts else "no report")
        log("%s: %s  [%s]" % (label, "OK" if ok else "FAILED", summary))
        for key in total:
            total[key] += (counts or {}).get(key, 0)
    all_ok = bool(results) and all(ok for _, ok, _ in results)
    print("total: %(passed)d passed, %(failed)d failed, %(skipped)d skipped" % total, flush=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
