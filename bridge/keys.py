"""CurveZMQ keys: ``python -m bridge.keys DIR`` writes them; both sides load them from DIR.

The files are pyzmq's certificate format (``zmq.auth.create_certificates``):

* ``DIR/server.key`` and ``DIR/server.key_secret``: the sim side's key pair;
* ``DIR/client.key`` and ``DIR/client.key_secret``: the trainer's key pair.

The sim side (``carla_client --curve DIR``) needs ``server.key_secret`` and accepts exactly the client
public keys in DIR: every ``*.key`` except ``server.key`` (add a trainer by copying its ``NAME.key``
there). A trainer (``BridgeClient(curve=DIR)``) needs ``server.key`` and ``client.key_secret``. Copy
only what each host needs: secret files never have to leave the host that uses them.
"""
import argparse
import os
import sys
from typing import FrozenSet, List, NamedTuple, Optional, Tuple

import zmq
import zmq.auth

from bridge.errors import BridgeError

SERVER = "server"
CLIENT = "client"
KEY_FILES = ("server.key", "server.key_secret", "client.key", "client.key_secret")


class CurveError(BridgeError):
    """CURVE keys are missing, unreadable or unusable (or libzmq was built without CURVE)."""


class ServerKeys(NamedTuple):
    """What a CURVE server needs: its key pair and the client public keys it accepts (z85)."""

    public: bytes
    secret: bytes
    clients: FrozenSet[bytes]


class ClientKeys(NamedTuple):
    """What a CURVE client needs: its key pair and the server's public key (z85)."""

    public: bytes
    secret: bytes
    server: bytes


def check_curve_available() -> None:
    """Raises CurveError when this libzmq lacks CURVE (pyzmq's wheels have it, 3.6 included)."""
    if not zmq.has("curve"):
        raise CurveError("this libzmq ({}) was built without CURVE support: install pyzmq from its "
                         "wheels".format(zmq.zmq_version()))


def _load(path: str, secret: bool) -> Tuple[bytes, Optional[bytes]]:
    if not os.path.isfile(path):
        raise CurveError("missing CURVE key file {} (make keys with: python -m bridge.keys {})"
                         .format(path, os.path.dirname(path) or "."))
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise CurveError("cannot read CURVE key file {}: {}".format(path, e)) from e
    if secret and not secret_key:
        raise CurveError("{} holds no secret key".format(path))
    return public, secret_key


def client_public_keys(directory: str) -> List[str]:
    """The files whose public keys a server with ``directory`` accepts: ``*.key`` but server.key."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise CurveError("cannot read CURVE key directory {}: {}".format(directory, e)) from e
    return [os.path.join(directory, n) for n in names
            if n.endswith(".key") and n != SERVER + ".key"]


def load_server_keys(directory: str) -> ServerKeys:
    """The sim side's keys from ``directory``.

    Raises:
        CurveError: no CURVE in libzmq, a missing or unreadable file, or no client key at all.
    """
    check_curve_available()
    public, secret = _load(os.path.join(directory, SERVER + ".key_secret"), secret=True)
    clients = frozenset(_load(path, secret=False)[0] for path in client_public_keys(directory))
    if not clients:
        raise CurveError("no client public key (*.key other than server.key) in {}: no trainer "
                         "could connect".format(directory))
    return ServerKeys(public, secret, clients)


def load_client_keys(directory: str) -> ClientKeys:
    """A trainer's keys from ``directory``: server.key and client.key_secret.

    Raises:
        CurveError: no CURVE in libzmq, or a missing or unreadable file.
    """
    check_curve_available()
    public, secret = _load(os.path.join(directory, CLIENT + ".key_secret"), secret=True)
    server, _ = _load(os.path.join(directory, SERVER + ".key"), secret=False)
    return ClientKeys(public, secret, server)


def apply_client_keys(sock: zmq.Socket, keys: Optional[ClientKeys]) -> None:
    """Makes ``sock`` a CURVE client (before it connects); nothing when ``keys`` is None."""
    if keys is None:
        return
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server


def create_keys(directory: str) -> List[str]:
    """Writes a server and a client key pair into ``directory`` (created if needed).

    Secret files are created with mode 0600 (the umask is tightened while they are written).

    Raises:
        CurveError: one of the four files exists already (nothing is overwritten) or cannot be written.
    """
    check_curve_available()
    existing = [n for n in KEY_FILES if os.path.exists(os.path.join(directory, n))]
    if existing:
        raise CurveError("refusing to overwrite {} in {}: move them away first, or pick another "
                         "directory".format(", ".join(existing), directory))
    old_umask = os.umask(0o077)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        written = []
        for name in (SERVER, CLIENT):
            public, secret = zmq.auth.create_certificates(directory, name)
            os.chmod(secret, 0o600)
            os.chmod(public, 0o644)  # public keys may be shown and copied
            written += [public, secret]
    except OSError as e:
        raise CurveError("cannot write CURVE keys to {}: {}".format(directory, e)) from e
    finally:
        os.umask(old_umask)
    return written


def check_key_directory(directory: str, side: str) -> List[str]:
    """Problems with ``directory`` for ``side`` ("server" or "client"), for ``launch doctor``."""
    problems = []
    try:
        if side == SERVER:
            load_server_keys(directory)
            secret = os.path.join(directory, SERVER + ".key_secret")
        else:
            load_client_keys(directory)
            secret = os.path.join(directory, CLIENT + ".key_secret")
    except CurveError as e:
        return [str(e)]
    mode = os.stat(secret).st_mode & 0o777
    if mode & 0o077:
        problems.append("{} is readable by others (mode {:o}): chmod 600 it".format(secret, mode))
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.keys",
        description="Write CurveZMQ key pairs for the bridge: DIR/server.key, DIR/server.key_secret, "
                    "DIR/client.key, DIR/client.key_secret (pyzmq's format; never overwrites).")
    parser.add_argument("directory", metavar="DIR", help="where to write the keys (created if needed)")
    args = parser.parse_args(argv)
    try:
        written = create_keys(args.directory)
    except CurveError as e:
        print("error: {}".format(e), file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print("sim side:  python -m carla_client ... --curve {}  (needs server.key_secret and the "
          "client *.key files)".format(args.directory), file=sys.stderr)
    print("trainer:   BridgeClient(endpoint, curve={0!r}) / env.curve: {0}  (needs server.key and "
          "client.key_secret)".format(args.directory), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
