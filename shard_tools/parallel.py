"""Ordered, bounded parallel map: results come back in input order, with a fixed number of batches in flight.

Pool.imap would read the whole input ahead and let finished results pile up when the writer is slower;
here at most ``window`` batches exist at any time, so memory does not grow with the data set.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_PRELOAD = ["shard_tools.process"]


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def ordered_map(fn: Callable[[list[T]], list[R]], items: Iterable[T], workers: int, batch: int = 8,
                window_per_worker: int = 4) -> Iterator[R]:
    """``fn`` maps a batch to a list of results; yields results one by one in input order."""
    if workers <= 1:
        for chunk in batched(items, batch):
            yield from fn(chunk)
        return
    # forkserver: workers start from a clean process with the image libraries preloaded, never from a
    # parent whose OpenCV threads a fork could leave in a broken state.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    pool = ctx.Pool(workers)
    try:
        pending: deque[Any] = deque()
        for chunk in batched(items, batch):
            pending.append(pool.apply_async(fn, (chunk,)))
            if len(pending) >= workers * window_per_worker:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()
