"""A virtual X server (Debian's ``xvfb``) for tests of windows, with screenshots of its screen.

``Xvfb -fbdir DIR`` keeps its framebuffer in ``DIR/Xvfb_screen0``, an XWD file: reading that file is a
screenshot of the whole screen, with no X client library or screenshot tool needed.
"""
import os
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

XVFB = shutil.which("Xvfb")
MISSING_REASON = ("Xvfb is not installed (Debian/Ubuntu: `apt-get install xvfb`; .ci/run installs it "
                  "under CI=true)")


class VirtualDisplay(object):
    """``Xvfb`` on a free display number, with its screen in a file; a context manager.

    Args:
        width, height: the screen's size in pixels (24-bit colour).
        timeout: seconds to wait for the server to come up.
    """

    def __init__(self, width=800, height=600, timeout=20.0):
        self.fbdir = Path(tempfile.mkdtemp(prefix="czb-xvfb-"))
        read_fd, write_fd = os.pipe()
        # -displayfd: Xvfb picks a free display number and writes it to the pipe once it is ready.
        self.process = subprocess.Popen(
            [XVFB, "-displayfd", str(write_fd), "-screen", "0", "%dx%dx24" % (width, height),
             "-fbdir", str(self.fbdir), "-nolisten", "tcp", "-br"],  # -br: a black root window
            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        os.close(write_fd)
        try:
            self.display = ":" + self._read_number(read_fd, timeout)
        except Exception:
            self.close()
            raise
        finally:
            os.close(read_fd)

    def _read_number(self, fd, timeout):
        import select
        text = b""
        deadline = time.monotonic() + timeout
        while not text.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise RuntimeError("Xvfb did not report a display number in %.0f s" % timeout)
            chunk = os.read(fd, 32)
            if not chunk:
                raise RuntimeError("Xvfb exited with %s before it was ready" % self.process.poll())
            text += chunk
        return text.decode().strip()

    def env(self, **extra):
        """os.environ with DISPLAY pointing here (and the repository importable)."""
        env = dict(os.environ, DISPLAY=self.display, **extra)
        env.pop("WAYLAND_DISPLAY", None)
        return env

    def screenshot(self):
        """The whole screen now, as an RGB uint8 array (height, width, 3)."""
        return read_xwd(self.fbdir / "Xvfb_screen0")

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(str(self.fbdir), ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def read_xwd(path):
    """An XWD file (24-bit ZPixmap, 32 bits per pixel, as Xvfb writes it) as an RGB array."""
    data = Path(path).read_bytes()
    header = struct.unpack(">25I", data[:100])
    header_size, version, pixmap_format, depth, width, height = header[:6]
    byte_order, bits_per_pixel, bytes_per_line, ncolors = header[7], header[11], header[12], header[19]
    if version != 7 or pixmap_format != 2 or bits_per_pixel != 32:
        raise ValueError("unsupported XWD file: version %d, format %d, %d bits per pixel"
                         % (version, pixmap_format, bits_per_pixel))
    offset = header_size + 12 * ncolors
    rows = np.frombuffer(data, np.uint8, count=height * bytes_per_line, offset=offset)
    pixels = rows.reshape(height, bytes_per_line)[:, :4 * width].reshape(height, width, 4)
    order = [2, 1, 0] if byte_order == 0 else [1, 2, 3]  # LSBFirst: B, G, R, X in memory
    return np.ascontiguousarray(pixels[..., order])
