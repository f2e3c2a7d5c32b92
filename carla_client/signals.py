"""Stop signals of carla_client's commands: a flag set by any of them, polled by the serve loops."""
import signal
from typing import Any, List, Optional

#: signals that end the process through the same restore path as SIGTERM (each where it exists):
#: SIGHUP when the terminal or SSH session closes, SIGQUIT (Ctrl-backslash), and SIGBREAK, which is how
#: Windows delivers the CTRL_BREAK_EVENT the launcher sends instead of TerminateProcess.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGBREAK")


def install_stop_handlers(handler: Any) -> List[int]:
    """Routes every stop signal this platform has to ``handler``; returns the signal numbers."""
    installed = []
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, handler)
            installed.append(int(number))
    return installed


class StopFlag(object):
    """Callable: true once one of STOP_SIGNALS arrived; ``signal`` holds which."""

    def __init__(self) -> None:
        self.signal = None  # type: Optional[int]

    def __call__(self) -> bool:
        return self.signal is not None

    def set(self, signum: int, frame: object) -> None:
        self.signal = signum

    def install(self) -> "StopFlag":
        """Makes every stop signal set this flag instead of ending the process."""
        install_stop_handlers(self.set)
        return self
