"""A trainer stand-in: hello, reset, then step forever. Prints ``ready <session>`` after the hello.

Used to kill -9 a client mid-session and check that the server notices and recovers.
"""
import argparse
import sys

from bridge.client import BridgeClient


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", required=True)
    parser.add_argument("--heartbeat", type=float, default=0.2)
    args = parser.parse_args(argv)
    client = BridgeClient(args.connect, heartbeat_seconds=args.heartbeat)
    info = client.hello()
    client.reset()
    print("ready {}".format(info.session), flush=True)
    while True:
        client.step({"throttle": 0.1, "steer": 0.0})


if __name__ == "__main__":
    sys.exit(main())
