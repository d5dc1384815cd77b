"""SIGTERM during training: a graceful stop request, and a bounded exit for a rank that cannot stop.

The training loop polls ``StopRequest.requested`` after each step: every rank then saves a
checkpoint and exits 0. Python runs a signal handler only when the main thread executes Python
bytecode, so a rank blocked in a collective whose peer is gone (or in any single native call)
would ignore SIGTERM until the collective times out. The C-level handler still writes the signal
number to ``signal.set_wakeup_fd`` at once: a watchdog thread reads it and, if the Python handler
has not run within ``grace`` seconds, ends the process with status 143 (128 + SIGTERM) without
entering any collective. Checkpoints are swapped in atomically, so the last one stays intact.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

EXIT_STATUS = 128 + signal.SIGTERM


class StopRequest:
    """Install on the main thread once: SIGTERM sets ``requested``; a stuck main thread ends the process."""

    def __init__(self, grace: float) -> None:
        self.requested = False
        self.grace = grace
        wake_r, wake_w = os.pipe()
        self._ack_r, self._ack_w = os.pipe()
        for fd in (wake_w, self._ack_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._handler)
        threading.Thread(target=self._watch, args=(wake_r,), name="sigterm-watchdog", daemon=True).start()

    def _handler(self, signum: int, frame: object) -> None:
        """Main thread: the graceful path; acknowledge to the watchdog."""
        self.requested = True
        try:
            os.write(self._ack_w, b"\x01")
        except BlockingIOError:  # the pipe is full of acknowledgements: the watchdog knows
            pass

    def _watch(self, wake_r: int) -> None:
        """Watchdog thread: a SIGTERM that the main thread has not handled within ``grace`` ends the process.

        The C handler writes the wakeup byte before the Python handler can acknowledge, so reading the
        wakeup pipe before the acknowledgements of the same round keeps the order right.
        """
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([wake_r, self._ack_r], [], [], timeout)
            if wake_r in ready and signal.SIGTERM in os.read(wake_r, 512) and deadline is None:
                deadline = time.monotonic() + self.grace
            if self._ack_r in ready:
                os.read(self._ack_r, 512)
                deadline = None
            if deadline is not None and time.monotonic() >= deadline:
                self._exit()

    def _exit(self) -> None:
        from pipelines.base.exits import leave_now

        print(f"SIGTERM: the main thread has been blocked for {self.grace:g} s (a collective whose peer is gone?); "
              f"exiting with {EXIT_STATUS}, the last checkpoint is kept", file=sys.stderr, flush=True)
        leave_now(EXIT_STATUS)
