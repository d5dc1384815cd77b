"""The error path of every entry point: print, and once a process group exists, leave at once.

A failing rank must not enter a collective (its peers may be blocked in one, DESIGN section 7) nor run
the interpreter's finalisation (torch waits for loader workers there, and gloo may abort): it kills
its loader workers and ends with ``os._exit``; the launcher sees the status and ends the other ranks.
This module imports no torch (``launch/predict.py --model`` runs without it): a process group can only
exist when torch.distributed was imported.

Which errors are the user's: ``InputError`` (the base of ConfigError, DeployError, SlurmError and of every
refusal of a file, path or value the user gave) and OSError (its text names the file). Entry points pass
``USER_ERRORS`` plus their own (ShardError, a training that diverged) to ``run_entry``; every other
exception, a ValueError from inside the library included, is a bug and keeps its traceback.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable


class InputError(ValueError):
    """Bad input (a config, a path, a file's contents, an option) named in the message: one line, status 2.

    A ValueError, so code that catches ValueError around the project's checks keeps working."""


# OSError: a missing, unreadable or unwritable file; its message names the path.
USER_ERRORS: tuple[type[BaseException], ...] = (InputError, OSError)


def run_entry(body: Callable[[], int], expected: tuple[type[BaseException], ...]) -> int:
    """Run an entry point's body: expected errors as one line (status 2), anything else with its
    traceback (status 1), Ctrl-C as 130; each through ``exit_on_error``."""
    try:
        return body()
    except SystemExit:
        raise
    except BaseException as err:
        try:
            return _on_error(err, expected)
        except BaseException:  # a signal handler raised before _on_error silenced it: once more, quietly
            return _on_error(err, expected)


def _on_error(err: BaseException, expected: tuple[type[BaseException], ...]) -> int:
    # torch's SIGCHLD handler raises in the main thread when a loader worker dies (a dying rank's
    # workers do): it must not hit the way out. Restored when the process goes on (no process group).
    quiet = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL) if quiet else None
    if isinstance(err, expected):
        code = exit_on_error(f"error: {one_line(err)}", 2)  # an OSError's text names its file
    elif isinstance(err, KeyboardInterrupt):
        code = exit_on_error("interrupted", 130)
    else:  # a bug, or a collective that failed because a peer is gone: the traceback says which
        code = exit_on_error("".join(traceback.format_exception(err)).rstrip(), 1)
    if previous is not None:
        signal.signal(signal.SIGCHLD, previous)
    return code


def one_line(err: BaseException) -> str:
    """The error's message; for one a DataLoader worker raised, the original message without the worker's
    traceback that torch wraps around it (the exception keeps its class, so it is still the user's)."""
    text = str(err)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]  # "package.module.ErrorClass: the message"
        text = last.partition(": ")[2] or last
    return text


def exit_on_error(message: str, code: int) -> int:
    """The error path of an entry point: print ``message``; in a multi-process run, leave at once.

    Once a process group exists, peers may be blocked in a collective waiting for this rank, so no
    collective and no interpreter finalisation (which waits for loader workers and may abort in
    gloo) may run: the loader workers are killed and the process ends with ``os._exit(code)``; the
    launcher sees the status and ends the other ranks. Without a process group it kills the loader workers
    and returns ``code``.
    """
    rank, world = world_from_env()
    print((f"[rank {rank}] " if world > 1 else "") + message, file=sys.stderr, flush=True)
    if process_group_exists():
        leave_now(code)
    kill_workers()  # a loader worker whose error ended the run waits for work; it inherited the SIGTERM handler
    return code


def kill_workers() -> None:
    """Kill this process's loader workers (multiprocessing's exit would wait for them: SIGTERM only asks them
    to stop, and they inherited the trainer's handler of it)."""
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join(5)  # reaped here, while _on_error holds SIGCHLD at its default: torch's handler never sees them


def leave_now(code: int) -> None:
    """Kill this process's loader workers and exit with ``code`` without finalisation (nothing left behind)."""
    kill_workers()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def process_group_exists() -> bool:
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def world_from_env() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment, before any process group exists."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
