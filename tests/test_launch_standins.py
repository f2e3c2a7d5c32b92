"""Stand-ins for carla_client and agent.train, fast and scriptable, for the launcher's supervision tests.

    python -m tests.test_launch_standins --world builtin --bind tcp://... [--step-delay S] [--die-after N]
        [--ignore-sigterm] [--fail-once MARKER]
        (the sim side: the counting peer with carla_client's command line; runs under Python 3.6)
    python -m tests.test_launch_standins --config C --run-name R runs_dir=D endpoints=a,b total_timesteps=N
        [go_silent_at=K]
        (the trainer: steps every endpoint N times, reconnecting like agent.env does, and reports its
        progress in status.json like agent.train; SIGINT/SIGTERM write checkpoints/standin_<step>.txt
        and exit 130; the end writes model.zip. go_silent_at: after K steps it stops stepping and
        reporting but stays alive until stopped)

3.6 syntax: the sim side runs under the sim venv. No tests here; test_launch.py uses these.
"""
import argparse
import json
import logging
import os
import signal
import sys
import time

from bridge.errors import BridgeTimeoutError, PeerDisconnectedError, SessionError

RECONNECTABLE = (BridgeTimeoutError, PeerDisconnectedError, SessionError)


def sim_main(argv):
    from bridge.server import BridgeServer
    from tests.peers.counting_peer import CountingHandler

    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--world", default="builtin")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--die-after", type=int, default=0, help="exit(3) after this many steps")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--fail-once", metavar="MARKER",
                        help="exit(4) before serving unless MARKER exists (and create it)")
    args, _ = parser.parse_known_args(argv)
    if args.fail_once and not os.path.exists(args.fail_once):
        open(args.fail_once, "w").close()
        print("standin sim: failing the first start as asked", flush=True)
        return 4
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    stopping = []
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *a: stopping.append(1))
    handler = CountingHandler(8, 8, args.step_delay)
    if args.die_after:
        step = handler.step

        def dying_step(action):
            if handler.frame >= args.die_after:
                print("standin sim: dying as asked", flush=True)
                os._exit(3)
            return step(action)
        handler.step = dying_step
    with BridgeServer(handler, bind=args.bind) as server:
        print("standin sim serving {} under {}".format(server.endpoint, sys.version.split()[0]),
              flush=True)
        server.serve(should_stop=lambda: bool(stopping))
    print("standin sim: stopped cleanly", flush=True)
    return 0


class _Env(object):
    """One endpoint with agent.env's reconnect behaviour: a new client and hello until a deadline."""

    def __init__(self, endpoint, should_stop, timeout=3.0, reconnect_timeout=30.0):
        self.endpoint, self.timeout, self.reconnect_timeout = endpoint, timeout, reconnect_timeout
        self.should_stop = should_stop
        self.reconnects = 0
        self.client = None
        self._connect(time.monotonic() + reconnect_timeout)

    def _connect(self, deadline):
        from bridge.client import BridgeClient
        while True:
            client = BridgeClient(self.endpoint, timeout=self.timeout, heartbeat_seconds=0.5)
            try:
                client.hello()
                client.reset(seed=0)
                self.client = client
                return
            except RECONNECTABLE:
                client.close()
                if time.monotonic() > deadline or self.should_stop():
                    raise

    def step(self):
        try:
            self.client.step({"throttle": 0.5, "steer": 0.0})
        except RECONNECTABLE:
            self.client.close()
            self.reconnects += 1
            self._connect(time.monotonic() + self.reconnect_timeout)

    def close(self):
        if self.client is not None:
            self.client.close()


def trainer_main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--run-name", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    config = dict(item.split("=", 1) for item in args.overrides)
    run_dir = os.path.join(config.get("runs_dir", "runs"), args.run_name)
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    envs = [_Env(e, lambda: bool(interrupted)) for e in config["endpoints"].split(",")]
    total = int(config.get("total_timesteps", "100"))
    print("standin trainer: {} envs, {} steps, overrides {}".format(len(envs), total, args.overrides),
          flush=True)
    from agent.status import status_path, write_status  # trainer side only (Python 3.11)
    silent_at = int(config.get("go_silent_at", "0"))
    status = {"phase": "collecting", "started": time.time(), "num_timesteps": 0,
              "total_timesteps": total, "start_timesteps": 0, "device": "standin", "episodes": 0}
    step = 0
    try:
        for step in range(1, total + 1):
            if step == silent_at:
                print("standin trainer: going silent at step {}".format(step), flush=True)
                while not interrupted:
                    time.sleep(0.05)
            try:
                for env in envs:
                    env.step()
            except RECONNECTABLE:
                if not interrupted:
                    raise
            if step % 10 == 0 or step == 1:
                elapsed = time.time() - status["started"]
                status.update(updated=time.time(), num_timesteps=step,
                              steps_per_second=step / elapsed if elapsed > 0 else None)
                write_status(status_path(run_dir), status)
            if interrupted:
                path = os.path.join(run_dir, "checkpoints", "standin_{}.txt".format(step))
                with open(path, "w") as f:
                    f.write("interrupted by {}\n".format(interrupted[0]))
                print("standin trainer: saved {}".format(path), flush=True)
                return 130
        with open(os.path.join(run_dir, "model.zip"), "w") as f:
            json.dump({"steps": step, "reconnects": [env.reconnects for env in envs]}, f)
        print("standin trainer: done", flush=True)
        return int(config.get("exit_code", "0"))
    finally:
        for env in envs:
            env.close()


if __name__ == "__main__":
    sys.exit(sim_main(sys.argv[1:]) if "--bind" in sys.argv else trainer_main(sys.argv[1:]))
