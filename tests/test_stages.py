"""The runtime's stages (pipelines/__init__.py), read from the code's imports: every import inside ``pipelines``
runs down the stage order (base <- data <- training <- evaluation <- deploy <- experiments), and no modules
import each other in a cycle. Imports inside functions count too: a lazy import is still an arrow."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "pipelines"
ORDER = ("base", "data", "training", "evaluation", "deploy", "experiments")


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{"stage.module": {"stage.module", ...}}``: the modules of ``root``'s stage packages and what each imports
    of them (``from pipelines.s import m`` and ``from pipelines.s.m import x`` alike)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.glob("*/*.py")):
        if path.name == "__init__.py":
            continue
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == root.name and len(parts) >= 3 and (root / parts[1] / f"{parts[2]}.py").is_file():
                    targets.add(f"{parts[1]}.{parts[2]}")
        graph[f"{path.parent.name}.{path.stem}"] = targets - {f"{path.parent.name}.{path.stem}"}
    return graph


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a later stage (or of a folder that is no stage)."""
    rank = {stage: i for i, stage in enumerate(ORDER)}
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if rank.get(b.split(".")[0], len(ORDER)) > rank.get(a.split(".")[0], -1))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (depth-first search)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_module_sits_in_a_stage() -> None:
    loose = [p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], "pipelines/ holds stage packages only"
    assert sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(ORDER)


def test_imports_run_down_the_stages_without_cycles() -> None:
    graph = import_graph(ROOT)
    assert len(graph) > 30 and graph["training.train"]  # the graph was read
    assert upward(graph) == []
    assert cycles(graph) == []


def test_the_check_sees_a_planted_upward_import_and_a_cycle(tmp_path: Path) -> None:
    root = tmp_path / "pipelines"
    for stage, module, body in (("base", "config", "from pipelines.data.labels import x\n"),
                                ("data", "labels", "from pipelines.base.config import y\n"),
                                ("training", "loop", "def f():\n    from pipelines.evaluation import score\n"),
                                ("evaluation", "score", "import pipelines.base.config\n")):
        (root / stage).mkdir(parents=True, exist_ok=True)
        (root / stage / f"{module}.py").write_text(body)
    graph = import_graph(root)
    assert upward(graph) == ["base.config -> data.labels", "training.loop -> evaluation.score"]
    assert cycles(graph) == [["base.config", "data.labels", "base.config"]]
