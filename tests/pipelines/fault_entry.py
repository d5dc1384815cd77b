"""Test helper, not part of the product: one rank of ``accelerate launch`` running launch/train.py or
launch/evaluate.py with a fault injected from outside the production code.

    accelerate launch ... tests/pipelines/fault_entry.py train|evaluate ARGS...

    FAULT_RAISE=R:N    rank R raises RuntimeError in its N-th ``Accelerator.backward`` call, mid-step:
                       its peer is then inside the step's collectives (the gathered features' backward)
    FAULT_CWD_R=DIR    rank R runs in DIR, so a relative run.dir is another folder on each rank
                       (e.g. one that rank cannot write)

It prints "fault-injected <unix time>" just before raising, so that a test can time the way out.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _raise_at(call: int) -> None:
    import accelerate

    original = accelerate.Accelerator.backward
    calls = [0]

    def backward(self, loss, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == call:
            print(f"fault-injected {time.time():.3f}", file=sys.stderr, flush=True)
            raise RuntimeError(f"injected fault in backward call {call}")
        return original(self, loss, **kwargs)

    accelerate.Accelerator.backward = backward


if __name__ == "__main__":
    rank = os.environ.get("RANK", "0")
    if os.environ.get(f"FAULT_CWD_{rank}"):
        os.chdir(os.environ[f"FAULT_CWD_{rank}"])
    fault = os.environ.get("FAULT_RAISE", "")
    if fault and fault.split(":")[0] == rank:
        _raise_at(int(fault.split(":")[1]))
    script = REPO / "launch" / f"{sys.argv[1]}.py"
    sys.argv = [str(script), *sys.argv[2:]]
    runpy.run_path(str(script), run_name="__main__")
