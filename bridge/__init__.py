"""carla-zmq-bridge's wire protocol: msgpack + ZeroMQ, shared by the sim side (Python 3.6+) and the trainer."""
from bridge.protocol import PROTOCOL_VERSION

__version__ = "0.1.0"
__all__ = ["PROTOCOL_VERSION", "__version__"]
