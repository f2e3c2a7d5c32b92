"""A stop flag set by SIGINT/SIGTERM, polled by the serve loops of carla_client's commands."""
import signal
from typing import Optional


class StopFlag(object):
    """Callable: true once SIGINT or SIGTERM arrived; ``signal`` holds which."""

    def __init__(self) -> None:
        self.signal = None  # type: Optional[int]

    def __call__(self) -> bool:
        return self.signal is not None

    def set(self, signum: int, frame: object) -> None:
        self.signal = signum

    def install(self) -> "StopFlag":
        """Makes SIGINT and SIGTERM set this flag instead of ending the process."""
        signal.signal(signal.SIGINT, self.set)
        signal.signal(signal.SIGTERM, self.set)
        return self
