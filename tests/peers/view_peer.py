"""Drives agent.view.LiveView on a real display (tests/test_view.py runs it under Xvfb).

Prints one JSON line: what show() returned, the window's state, and how many frames were drawn.
The window is closed the way a window manager does when the user clicks its close button.
"""
import json

import cv2
import numpy as np

from agent.view import LiveView


def main():
    now = [0.0]
    view = LiveView(min_interval=1.0 / 16, clock=lambda: now[0])
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[:, :32] = (220, 40, 40)
    shown = []
    for _ in range(100):  # 100 calls 1/64 s apart: at most one frame per 1/16 s is drawn
        shown.append(view.show(frame, ["rate limited"]))
        now[0] += 1.0 / 64
    drawn_at_rate = view.frames
    cv2.destroyWindow(view.title)  # the user closes the window
    cv2.waitKey(1)
    now[0] += 1.0
    after_close = view.show(frame, ["after close"])
    now[0] += 1.0
    later = view.show(frame, ["later"])
    print(json.dumps({"all_shown": all(shown), "drawn_at_rate": drawn_at_rate, "after_close": after_close,
                      "later": later, "state": view.state, "frames": view.frames}), flush=True)


if __name__ == "__main__":
    main()
