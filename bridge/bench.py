"""Lockstep round-trip benchmark: the real bridge (TCP frames and /dev/shm) against raw pyzmq.

Usage (from the repository root)::

    PYTHONPATH=. python -m bridge.bench                      # serving side: same interpreter
    PYTHONPATH=. python -m bridge.bench --peer-python .venvs/sim-3.6/bin/python
    PYTHONPATH=. python -m bridge.bench --json --steps 2000 --payloads state,1280x720x4

The serving side runs in another process (bridge._bench_peer) and holds both a raw pyzmq REP peer
(a msgpack header plus the array as one zero-copy frame: the baseline of ../shared/TRANSPORT_FACTS.md)
and a real BridgeServer with a SessionHandler that returns the same pre-built array every step. For
each payload and round the client measures, in turn, raw pyzmq, the bridge over TCP frames
(``use_shm=False``) and the bridge over shared memory (``use_shm=True``), each with the client's
default of returning views, then (unless ``--no-copy``) the same two bridge paths with
``copy_arrays=True``. The order rotates every round; warm-up steps are not timed. Reported figures
are the median over rounds of each round's median (and the p99 of all timed steps pooled), so read
ratios rather than microseconds on a noisy machine. docs/benchmarks.md has results.
"""
import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import msgpack
import numpy as np
import zmq

from bridge._bench_peer import (ACTION_FIELDS, DEFAULT_PAYLOADS, STOP_ACTION, build_array,
                                payload_shape)
from bridge.client import BridgeClient
from bridge.keys import create_keys

#: the action sent every step by both clients (three floats within the action spec's bounds).
ACTION = {"throttle": 0.5, "steer": -0.125, "brake": 0.0}
assert tuple(sorted(ACTION)) == tuple(sorted(ACTION_FIELDS))

#: measurement variants: (name, kind, use_shm, copy_arrays).
RAW = ("raw", "raw", False, False)
TCP = ("tcp", "bridge", False, False)
SHM = ("shm", "bridge", True, False)
TCP_COPY = ("tcp+copy", "bridge", False, True)
SHM_COPY = ("shm+copy", "bridge", True, True)
#: the bridge over TCP with CurveZMQ on both ends (``--curve``): what authentication and encryption cost.
TCP_CURVE = ("tcp+curve", "bridge-curve", False, False)

#: goals: bridge median <= this times raw pyzmq; 1280x720x4 over shm <= SHM_GOAL times raw TCP.
RATIO_GOAL = 1.25
SHM_GOAL = 0.5
SHM_GOAL_PAYLOAD = "1280x720x4"

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PeerError(RuntimeError):
    """The serving process failed, died or stopped answering."""


class PeerProcess(object):
    """The serving side in a subprocess, driven over a PAIR control socket (readiness: its hello).

    Args:
        python: interpreter that runs bridge._bench_peer (any that can import this ``bridge``).
        timeout: seconds to wait for any control answer.
    """

    def __init__(self, python: str, timeout: float) -> None:
        self.python = python
        self.timeout = timeout
        self.context = zmq.Context()
        self.control = self.context.socket(zmq.PAIR)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind("tcp://127.0.0.1:*")
        endpoint = self.control.getsockopt_string(zmq.LAST_ENDPOINT)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        try:
            # own session: Ctrl-C goes to the benchmark only, which then stops the peer in close()
            self.process = subprocess.Popen(
                [python, "-m", "bridge._bench_peer", "--control", endpoint,
                 "--parent-pid", str(os.getpid())],
                cwd=_ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            self._close_sockets()
            raise PeerError("cannot start the serving side with {!r}: {}".format(python, e)) from e
        try:
            self.info = self.receive()  # the peer's hello: it is up and its imports worked
        except BaseException:
            self.close()
            raise

    def receive(self) -> Dict[str, Any]:
        """The next control message; raises PeerError if the peer dies or stays silent."""
        deadline = time.monotonic() + self.timeout
        while True:
            if self.control.poll(200):
                return msgpack.unpackb(self.control.recv(), raw=False)
            code = self.process.poll()
            if code is not None:
                raise PeerError("the serving process ({} -m bridge._bench_peer) exited with code {}; "
                                "see its error output above".format(self.python, code))
            if time.monotonic() > deadline:
                raise PeerError("the serving process ({}) did not answer within {:.0f} s".format(
                    self.python, self.timeout))

    def serve(self, kind: str, payload: str, curve: Optional[str] = None) -> str:
        """Asks the peer to serve one measurement; returns the endpoint to connect to."""
        self.control.send(msgpack.packb({"cmd": "serve", "kind": kind, "payload": payload,
                                         "curve": curve}, use_bin_type=True))
        answer = self.receive()
        if not answer.get("ok"):
            raise PeerError("the serving process cannot serve {} {}: {}".format(
                kind, payload, answer.get("error")))
        return str(answer["endpoint"])

    def wait_done(self) -> None:
        answer = self.receive()
        if not answer.get("done"):
            raise PeerError("unexpected control message from the serving process: {!r}".format(
                answer))

    def close(self) -> None:
        """Asks the peer to exit; terminates, then kills it if it does not. Idempotent."""
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            try:
                self.control.send(msgpack.packb({"cmd": "exit"}), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
        self._close_sockets()

    def _close_sockets(self) -> None:
        if not self.control.closed:
            self.control.close(linger=0)
            self.context.term()


def _check_observation(got: Optional[np.ndarray], expected: Optional[np.ndarray], what: str) -> None:
    if expected is None:
        return
    if got is None or got.shape != expected.shape or not np.array_equal(got, expected):
        raise AssertionError("{}: the received observation differs from the served one".format(what))


def measure_raw(endpoint: str, payload: str, steps: int, warmup: int, timeout: float
                ) -> Tuple[List[float], float, bool]:
    """Raw pyzmq REQ client: 3-float action out, msgpack header + zero-copy array frame back.

    Returns (per-step seconds, wall seconds of the timed steps, shared memory used: False).
    """
    context = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    sock.connect(endpoint)
    expected = build_array(payload)
    samples = []  # type: List[float]
    clock = time.perf_counter
    try:
        for i in range(warmup + steps):
            if i == warmup:
                wall_start = clock()
            started = clock()
            sock.send(msgpack.packb(ACTION, use_bin_type=True))
            frames = sock.recv_multipart(copy=False)
            header = msgpack.unpackb(frames[0].buffer, raw=False)
            camera = header.get("camera")
            image = None
            if camera is not None:
                image = np.frombuffer(frames[1], dtype=np.dtype(camera[0])).reshape(camera[1])
            samples.append(clock() - started)
            if i == 0:
                _check_observation(image, expected, "raw " + payload)
        wall = clock() - wall_start
        sock.send(STOP_ACTION)
        sock.recv()
    finally:
        sock.close(linger=0)
    return samples[warmup:], wall, False


def measure_bridge(endpoint: str, payload: str, steps: int, warmup: int, timeout: float,
                   use_shm: bool, copy_arrays: bool, curve: Optional[str] = None
                   ) -> Tuple[List[float], float, bool]:
    """BridgeClient.step() round trips; returns (per-step seconds, wall seconds, shm negotiated)."""
    client = BridgeClient(endpoint, timeout=timeout, use_shm=use_shm, copy_arrays=copy_arrays,
                          curve=curve)
    expected = build_array(payload)
    samples = []  # type: List[float]
    clock = time.perf_counter
    try:
        info = client.hello()
        client.reset(seed=0)
        for i in range(warmup + steps):
            if i == warmup:
                wall_start = clock()
            started = clock()
            tick = client.step(ACTION)
            samples.append(clock() - started)
            if i == 0:
                _check_observation(tick.observation.get("camera"), expected,
                                   "bridge {} {}".format("shm" if use_shm else "tcp", payload))
        wall = clock() - wall_start
    finally:
        client.close()
    return samples[warmup:], wall, info.shm


class Series(object):
    """The timed steps of one (payload, variant) over all rounds."""

    def __init__(self) -> None:
        self.round_medians = []  # type: List[float]
        self.round_rates = []  # type: List[float]
        self.samples = []  # type: List[float]
        self.shm_active = False

    def add(self, samples: Sequence[float], wall: float, shm_active: bool) -> None:
        self.round_medians.append(float(np.median(samples)))
        self.round_rates.append(len(samples) / wall)
        self.samples.extend(samples)
        self.shm_active = shm_active

    @property
    def median_us(self) -> float:
        return 1e6 * float(np.median(self.round_medians))

    @property
    def p99_us(self) -> float:
        return 1e6 * float(np.percentile(self.samples, 99))

    @property
    def steps_per_s(self) -> float:
        return float(np.median(self.round_rates))


def run(peer: PeerProcess, payloads: Sequence[str], steps: int, warmup: int, repeats: int,
        copy_variant: bool, timeout: float, progress: bool, curve: Optional[str] = None
        ) -> List[Dict[str, Any]]:
    """Runs every measurement, rounds outermost; returns the records described in the module doc.

    With ``curve`` (a key directory), the bridge over TCP is also measured with CurveZMQ on.
    """
    variants = ([RAW, TCP, SHM] + ([TCP_COPY, SHM_COPY] if copy_variant else [])
                + ([TCP_CURVE] if curve else []))
    series = {(p, v[0]): Series() for p in payloads for v in variants}
    for round_index in range(repeats):
        for payload in payloads:
            shift = round_index % len(variants)  # rotate so no variant always runs first
            for name, kind, use_shm, copy_arrays in variants[shift:] + variants[:shift]:
                if copy_arrays and payload_shape(payload) is None:
                    continue  # nothing to copy
                keys = curve if kind == "bridge-curve" else None
                endpoint = peer.serve(kind, payload, keys)
                gc.collect()
                if kind == "raw":
                    result = measure_raw(endpoint, payload, steps, warmup, timeout)
                else:
                    result = measure_bridge(endpoint, payload, steps, warmup, timeout,
                                            use_shm, copy_arrays, keys)
                peer.wait_done()  # (after a failure the peer is just stopped by close())
                series[(payload, name)].add(*result)
                if progress:
                    print("round {}/{} {:>11} {:<8} median {:8.1f} us".format(
                        round_index + 1, repeats, payload, name,
                        series[(payload, name)].round_medians[-1] * 1e6), file=sys.stderr)
    records = []
    for payload in payloads:
        raw = series[(payload, "raw")]
        for path in ("tcp", "shm"):
            s = series[(payload, path)]
            record = {
                "payload": payload, "path": path,
                "median_us": round(s.median_us, 1), "p99_us": round(s.p99_us, 1),
                "steps_per_s": round(s.steps_per_s, 1),
                "raw_median_us": round(raw.median_us, 1), "raw_p99_us": round(raw.p99_us, 1),
                "ratio": round(s.median_us / raw.median_us, 3),
                "shm_active": s.shm_active,
                "round_medians_us": [round(1e6 * m, 1) for m in s.round_medians],
                "raw_round_medians_us": [round(1e6 * m, 1) for m in raw.round_medians],
            }
            copy = series.get((payload, path + "+copy"))
            if copy is not None and copy.round_medians:
                record["copy_median_us"] = round(copy.median_us, 1)
                record["copy_ratio"] = round(copy.median_us / raw.median_us, 3)
            secured = series.get((payload, path + "+curve"))
            if secured is not None and secured.round_medians:
                record["curve_median_us"] = round(secured.median_us, 1)
                record["curve_p99_us"] = round(secured.p99_us, 1)
                record["curve_vs_tcp"] = round(secured.median_us / s.median_us, 3)
            records.append(record)
    return records


def _versions() -> Dict[str, Any]:
    return {"python": sys.version.split()[0], "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(), "msgpack": ".".join(map(str, msgpack.version)),
            "numpy": np.__version__}


def goal_failures(records: Sequence[Dict[str, Any]]) -> List[str]:
    """The goals a run missed, as sentences (empty when all are met)."""
    failures = []
    for r in records:
        if r["ratio"] > RATIO_GOAL:
            failures.append("{} over {}: {:.3f}x raw pyzmq (goal <= {}x)".format(
                r["payload"], r["path"], r["ratio"], RATIO_GOAL))
        if r["payload"] == SHM_GOAL_PAYLOAD and r["path"] == "shm" and r["ratio"] > SHM_GOAL:
            failures.append("{} over shm: {:.3f}x raw pyzmq over TCP (goal <= {}x)".format(
                r["payload"], r["ratio"], SHM_GOAL))
    return failures


def format_table(records: Sequence[Dict[str, Any]]) -> str:
    lines = ["| payload | path | median | p99 | steps/s | raw pyzmq median | ratio "
             "| copy_arrays=True median (ratio) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        copy = ("{:.0f} us ({:.2f}x)".format(r["copy_median_us"], r["copy_ratio"])
                if "copy_median_us" in r else "-")
        path = r["path"] if r["path"] == "tcp" or r["shm_active"] else "shm*"
        lines.append("| {} | {} | {:.0f} us | {:.0f} us | {:.0f} | {:.0f} us | {:.2f}x | {} |".format(
            r["payload"], path, r["median_us"], r["p99_us"], r["steps_per_s"], r["raw_median_us"],
            r["ratio"], copy))
    if any(r["path"] == "shm" and not r["shm_active"] for r in records):
        lines.append("")
        lines.append("\\* shared memory not negotiated: no observation array reaches the server's "
                     "shm_limit (64 KiB), so the row takes the same path as tcp.")
    secured = [r for r in records if "curve_median_us" in r]
    if secured:
        lines += ["", "| payload | tcp median | tcp + CurveZMQ median | p99 | CURVE cost |",
                  "|---|---|---|---|---|"]
        for r in secured:
            lines.append("| {} | {:.0f} us | {:.0f} us | {:.0f} us | {:+.0f} us ({:.2f}x) |".format(
                r["payload"], r["median_us"], r["curve_median_us"], r["curve_p99_us"],
                r["curve_median_us"] - r["median_us"], r["curve_vs_tcp"]))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Lockstep round trips over the real bridge (tcp and shm paths) against raw "
                    "pyzmq, with the serving side in another process.")
    parser.add_argument("--steps", type=int, default=1000, metavar="N",
                        help="timed steps per measurement (default: 1000)")
    parser.add_argument("--warmup", type=int, default=None, metavar="N",
                        help="untimed steps before each measurement (default: steps/10, at least 20)")
    parser.add_argument("--repeats", type=int, default=3, metavar="R",
                        help="interleaved rounds; medians are taken over them (default: 3)")
    parser.add_argument("--payloads", default=",".join(DEFAULT_PAYLOADS), metavar="LIST",
                        help="comma-separated: 'state' and/or WIDTHxHEIGHTxCHANNELS uint8 images "
                             "(default: {})".format(",".join(DEFAULT_PAYLOADS)))
    parser.add_argument("--peer-python", default=sys.executable, metavar="PATH",
                        help="interpreter for the serving side, e.g. .venvs/sim-3.6/bin/python "
                             "(default: this one, {})".format(sys.executable))
    parser.add_argument("--no-copy", dest="copy_variant", action="store_false",
                        help="skip the copy_arrays=True measurements")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="per-reply timeout for both clients and the control channel "
                             "(default: 30)")
    parser.add_argument("--curve", action="store_true",
                        help="also measure the bridge over TCP with CurveZMQ (keys made for the run)")
    parser.add_argument("--json", action="store_true",
                        help="print the records as a JSON list instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    payloads = [p.strip() for p in args.payloads.split(",") if p.strip()]
    try:
        for p in payloads:
            payload_shape(p)
    except ValueError as e:
        parser.error(str(e))
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be at least 1")
    warmup = args.warmup if args.warmup is not None else max(20, args.steps // 10)

    key_dir = tempfile.mkdtemp(prefix="czb-bench-keys-") if args.curve else None
    try:
        if key_dir is not None:
            create_keys(os.path.join(key_dir, "keys"))
        peer = PeerProcess(args.peer_python, args.timeout)
        try:
            records = run(peer, payloads, args.steps, warmup, args.repeats, args.copy_variant,
                          args.timeout, not args.quiet,
                          os.path.join(key_dir, "keys") if key_dir else None)
        finally:
            peer.close()
    except PeerError as e:
        print("bridge.bench: {}".format(e), file=sys.stderr)
        return 1
    finally:
        if key_dir is not None:
            shutil.rmtree(key_dir, ignore_errors=True)
    client, server = _versions(), peer.info
    for r in records:
        r["client_python"], r["peer_python"] = client["python"], server["python"]
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    print("client: Python {python}, pyzmq {pyzmq} (libzmq {libzmq}), msgpack {msgpack}, "
          "numpy {numpy}".format(**client))
    print("server: Python {python}, pyzmq {pyzmq} (libzmq {libzmq}), msgpack {msgpack}, "
          "numpy {numpy} (separate process)".format(**server))
    print("{} timed steps after {} warm-up steps, {} interleaved rounds; median of round medians, "
          "p99 over all timed steps; ratio = bridge median / raw pyzmq TCP median".format(
              args.steps, warmup, args.repeats))
    print()
    print(format_table(records))
    print()
    failures = goal_failures(records)
    if failures:
        print("goals missed:")
        for line in failures:
            print("  " + line)
    else:
        print("goals met: every payload <= {}x raw pyzmq; {} over shm <= {}x raw pyzmq TCP".format(
            RATIO_GOAL, SHM_GOAL_PAYLOAD, SHM_GOAL))
    return 0


if __name__ == "__main__":
    sys.exit(main())
