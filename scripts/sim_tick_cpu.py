"""CPU one built-in sim spends per tick, per thread and per part of its main thread.

Drives one ``python -m carla_client --world builtin`` sim (under the sim interpreter, default
sensors: the 64x64 camera) through a one-env ``BridgeVecEnv`` with the training config's env
settings and uniformly random actions, as ``python -m agent.bench --scale`` does, and reads the sim's
per-thread CPU time from /proc before and after the timed steps. The sim runs inside this same file
(``--child``, Python 3.6 syntax), which adds each main-thread part's thread CPU time up:
``request`` (waiting for, receiving, decoding and checking the request, the handler around the
world), ``world`` (BuiltinWorld.step, the camera included), ``encode`` and ``send``.

    python scripts/sim_tick_cpu.py [--steps 400] [--tick-latency-ms 50] [--sensors FILE]

Run it with the trainer's interpreter (``.venvs/trainer/bin/python``) from the repository root.
CPU times on a shared machine vary with its load (caches): compare runs taken close together.
"""
import argparse
import json
import os
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("serve_once", "world", "encode", "send")


def child(out_path, argv):
    """The sim side: carla_client with thread-CPU accounting of its main thread's parts."""
    import runpy
    sys.path.insert(0, REPO_ROOT)
    import bridge.codec
    import bridge.server
    from carla_client.builtin.world import BuiltinWorld
    totals = dict.fromkeys(PARTS, 0.0)
    totals["ticks"] = 0

    def timed(owner, name, part):
        inner = getattr(owner, name)

        def wrapper(*args, **kwargs):
            started = time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)
            try:
                return inner(*args, **kwargs)
            finally:
                totals[part] += time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID) - started
                totals["ticks"] += part == "world"
        setattr(owner, name, wrapper)

    timed(bridge.server.BridgeServer, "serve_once", "serve_once")
    timed(BuiltinWorld, "step", "world")
    timed(bridge.codec.Encoder, "encode", "encode")
    timed(bridge.server, "send_frames", "send")
    sys.argv = ["carla_client"] + argv
    try:
        runpy.run_module("carla_client", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        with open(out_path, "w") as f:
            json.dump(totals, f)


def thread_cpu(pid):
    """{thread id: user + system CPU seconds} of a process."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for tid in os.listdir("/proc/{}/task".format(pid)):
        try:
            with open("/proc/{}/task/{}/stat".format(pid, tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="timed env steps (default: 400)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps first (default: 50)")
    parser.add_argument("--tick-latency-ms", type=float, default=50.0,
                        help="the sim's --tick-latency-ms (default: 50)")
    parser.add_argument("--sensors", default=None, help="the sim's --sensors file (default: none)")
    args = parser.parse_args()
    sys.path.insert(0, REPO_ROOT)
    import numpy as np
    from agent.config import load_config
    from agent.simproc import SimProcess
    from agent.train import env_kwargs
    from agent.vec import BridgeVecEnv
    from launch.procs import ManagedProcess, child_env

    fd, parts_path = tempfile.mkstemp(prefix="sim-tick-cpu-", suffix=".json")
    os.close(fd)
    extra = ("--tick-latency-ms", str(args.tick_latency_ms))
    sim = SimProcess(seed=0, sensors=args.sensors, extra_args=extra)
    command = [sim.python, os.path.abspath(__file__), "--child", parts_path] + sim.command[3:]
    sim.child = ManagedProcess("carla_client", command, sim.log_path, env=child_env(), cwd=REPO_ROOT)
    sim.start()
    try:
        venv = BridgeVecEnv([sim.endpoint], seed=0, **env_kwargs(load_config()))
        space, rng = venv.action_space, np.random.default_rng(0)
        venv.reset()
        for index in range(args.warmup + args.steps):
            if index == args.warmup:
                before, started = thread_cpu(sim.child.pid), time.perf_counter()
            venv.step(rng.uniform(space.low, space.high, (1,) + space.shape).astype(space.dtype))
        after, wall = thread_cpu(sim.child.pid), time.perf_counter() - started
        venv.close()
    finally:
        sim.stop()
    with open(parts_path) as f:
        parts = json.load(f)
    os.unlink(parts_path)
    per_tick = 1e3 / args.steps
    print("sim CPU per tick: {:.3f} ms (wall {:.2f} ms per step, load {:.1f})".format(
        (sum(after.values()) - sum(before.get(t, 0.0) for t in after)) * per_tick,
        wall * per_tick, os.getloadavg()[0]))
    main_tid = sim.child.pid
    for tid in sorted(after):
        used = (after[tid] - before.get(tid, 0.0)) * per_tick
        print("  thread {}{}: {:.3f} ms".format(tid, " (main)" if tid == main_tid else "", used))
    ticks = parts.pop("ticks")  # warm-up included: averages over every tick the world made
    request = parts["serve_once"] - parts["world"] - parts["encode"] - parts["send"]
    print("  main thread per tick, ms: request {:.3f}, world {:.3f}, encode {:.3f}, send {:.3f} "
          "({} ticks)".format(*(1e3 * v / ticks for v in (request, parts["world"], parts["encode"],
                                                         parts["send"])), ticks))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
    else:
        main()
