"""Hostile peers from raw ZeroMQ sockets, and a measurement of what they cost a sim side.

    python -m tests.peers.hostile [--python SIM_PYTHON] [--attack unfinished|tiny-frames|ext|all]

starts a counting sim side (tests.peers.counting_peer) under SIM_PYTHON, keeps a legitimate trainer
stepping it from this process, runs the attack, and prints the sim side's peak memory growth (RSS,
sampled every 5 ms from /proc) and how many steps the trainer got served meanwhile.
"""
import argparse
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import zmq

from bridge.client import BridgeClient

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _dealer(context, endpoint):
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)  # never block the attacker on its own queue
    sock.connect(endpoint)
    return sock


class RawZmtpPeer(object):
    """A DEALER spoken by hand over a plain TCP socket (ZMTP 3.0, NULL mechanism).

    libzmq itself never puts an unfinished multipart message on the wire (it flushes whole messages
    only), so an attacker that sends frames marked "more" forever has to speak ZMTP itself, like this.
    """

    def __init__(self, endpoint, timeout=5.0):
        host, port = endpoint[len("tcp://"):].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout)
        self.sock.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0")
                          + b"\0" + b"\0" * 31)
        self._read(64)  # the server's greeting
        ready = b"\x05READY" + self._property(b"Socket-Type", b"DEALER")
        self.sock.sendall(b"\x04" + bytes([len(ready)]) + ready)
        flags, size = self._read(2)
        self._read(size)  # the server's READY

    @staticmethod
    def _property(name, value):
        return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value

    def _read(self, count):
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
        return data

    def send_frame(self, payload, more):
        flags = 0x01 if more else 0
        if len(payload) > 255:
            header = bytes([flags | 0x02]) + struct.pack(">Q", len(payload))
        else:
            header = bytes([flags, len(payload)])
        self.sock.sendall(header + payload)

    def recv_frame(self):
        """(payload, more) of the next frame from the server."""
        flags, size = self._read(2)
        if flags & 0x02:
            size = struct.unpack(">Q", bytes([size]) + self._read(7))[0]
        return self._read(size), bool(flags & 0x01)

    def close(self):
        self.sock.close()


def unfinished_message(endpoint, frame_bytes, frames, stop, batch=1):
    """Streams ``frames`` frames of ``frame_bytes`` marked "more" and never a last one, over a new
    connection whenever the server drops the current one, until ``stop`` is set. Returns the number
    of connections the server dropped."""
    payload = b"x" * frame_bytes
    frame = (bytes([0x03]) + struct.pack(">Q", frame_bytes) if frame_bytes > 255
             else bytes([0x01, frame_bytes])) + payload
    chunk = frame * batch
    dropped = 0
    while not stop.is_set():
        try:
            peer = RawZmtpPeer(endpoint)
        except OSError:
            stop.wait(0.1)
            continue
        try:
            for _ in range(0, frames, batch):
                if stop.is_set():
                    break
                peer.sock.sendall(chunk)
            stop.wait(0.2)
        except OSError:
            dropped += 1
        finally:
            peer.close()
    return dropped


def ext_requests(context, endpoint, count):
    """Sends ``count`` requests holding an unknown msgpack extension type; returns replies received."""
    sock = _dealer(context, endpoint)
    request = msgpack.packb({"seq": 1, "cmd": "ping", "body": {"x": msgpack.ExtType(42, b"abc" * 10)}},
                            use_bin_type=True)
    replies = 0
    try:
        for i in range(count):
            sock.send(request)
            if i % 100 == 99:  # keep at most 100 in flight
                while replies < i - 50 and sock.poll(5000):
                    sock.recv_multipart()
                    replies += 1
        while replies < count and sock.poll(5000):
            sock.recv_multipart()
            replies += 1
    finally:
        sock.close(linger=0)
    return replies


class SimSide(object):
    """``python -m tests.peers.counting_peer`` in a child process (any interpreter, 3.6 included),
    its log in a temporary file (a pipe nobody reads would block its logging); ``pid``, ``endpoint``.
    """

    def __init__(self, python, args=(), ready_timeout=30.0):
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [python, "-m", "tests.peers.counting_peer", "--bind", "tcp://127.0.0.1:0"] + list(args),
            cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=REPO_ROOT, PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE, stderr=self.log, start_new_session=True)
        self.pid = self.process.pid
        ready = select.select([self.process.stdout], [], [], ready_timeout)[0]
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("ready"):
            self.close()
            raise RuntimeError("the counting sim side did not start: {!r}".format(line))
        self.endpoint = line.split()[1]

    def close(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.process.stdout.close()
        self.log.close()


def rss_of(pid):
    with open("/proc/{}/statm".format(pid)) as f:
        return int(f.read().split()[1]) * 4096


class Sampler(threading.Thread):
    """Records the peak RSS of a process."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self):
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, rss_of(self.pid))


class Trainer(threading.Thread):
    """A legitimate trainer stepping the sim side; counts steps and the slowest one."""

    def __init__(self, endpoint):
        super().__init__(daemon=True)
        self.endpoint, self.steps, self.slowest, self.error = endpoint, 0, 0.0, None
        self.stop = threading.Event()

    def run(self):
        try:
            with BridgeClient(self.endpoint, timeout=10.0) as client:
                client.hello()
                client.reset()
                while not self.stop.is_set():
                    started = time.monotonic()
                    client.step({"throttle": 0.5, "steer": 0.0})
                    self.slowest = max(self.slowest, time.monotonic() - started)
                    self.steps += 1
        except Exception as e:  # reported by the measurement
            self.error = e


def measure(python, attack, seconds):
    child = SimSide(python)
    context = zmq.Context()
    try:
        time.sleep(1.0)
        baseline = rss_of(child.pid)
        sampler, trainer = Sampler(child.pid), Trainer(child.endpoint)
        sampler.start()
        trainer.start()
        stop = threading.Event()
        started = time.monotonic()
        if attack == "ext":
            replies = ext_requests(context, child.endpoint, 100000)
            print("ext: {} replies to 100000 requests".format(replies))
        else:
            size, frames, batch = ((30 * 1024 * 1024, 30, 1) if attack == "unfinished"
                                   else (1, 2000000, 10000))
            attackers = [threading.Thread(target=unfinished_message, daemon=True,
                                          args=(child.endpoint, size, frames, stop, batch))
                         for _ in range(2)]
            for thread in attackers:
                thread.start()
            stop.wait(seconds)
            stop.set()
            for thread in attackers:
                thread.join(10)
        elapsed = time.monotonic() - started
        time.sleep(0.5)
        trainer.stop.set()
        trainer.join(15)
        sampler.stop.set()
        sampler.join(5)
        after = rss_of(child.pid)
        print("{}: peak growth {:.0f} MB, {:.0f} MB left after; trainer served {} steps in {:.1f} s "
              "(slowest {:.3f} s, error {})".format(
                  attack, (sampler.peak - baseline) / 2 ** 20, (after - baseline) / 2 ** 20,
                  trainer.steps, elapsed, trainer.slowest, trainer.error))
        return sampler.peak - baseline, trainer
    finally:
        context.destroy(linger=0)
        child.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--attack", default="all", choices=("unfinished", "tiny-frames", "ext", "all"))
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    attacks = ("unfinished", "tiny-frames", "ext") if args.attack == "all" else (args.attack,)
    for attack in attacks:
        measure(args.python, attack, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
