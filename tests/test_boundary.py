"""The library boundary (DESIGN.md section 3): importing every ccl module loads none of the runtime's packages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("accelerate", "deepspeed", "wandb", "webdataset", "pipelines")

# In a fresh interpreter: import each ccl module by its file, then list the forbidden top-level packages loaded.
PROBE = """
import importlib, json, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1].split(",")))))
"""


def ccl_modules(root: Path = ROOT) -> list[str]:
    """Every module of the ccl package, from its files (a module nothing imports is found too)."""
    files = sorted((root / "ccl").rglob("*.py"))
    return [".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__") for f in files]


def loaded_forbidden(modules: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, ",".join(FORBIDDEN), *modules], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_ccl_imports_none_of_the_runtime_packages() -> None:
    modules = ccl_modules()
    assert "ccl.models.rdccl" in modules and "ccl.losses.gather" in modules and len(modules) > 20
    assert loaded_forbidden(modules) == []


def test_the_probe_sees_a_forbidden_import() -> None:
    """The check can fail: a module that imports pipelines is caught."""
    assert loaded_forbidden(["pipelines.base.config", "ccl"]) == ["pipelines"]
