"""Demo-like data, two evaluated training exports and their deployed graphs, made once per test session.

    runs = DeployRuns(tmp)                  # demo folder (64 px) + its shards
    runs.export("ccl")                      # RD + CCL with the 4-conv-block projector, evaluated
    runs.export("joint_rd")                 # Joint RD: no projector, lambdas 0, evaluated
    runs.deployed("ccl", "onnx")            # launch/export.py output: DIR/model.onnx (cached)
    images, labels, paths = runs.test_images()

The teacher is the offline ImageNet MobileNetV2 (no hub); the trainable parts keep their seeded
random initialisation (speed and parity do not depend on training). Evaluation is the real
``run_evaluation`` on the demo shards: it stores the F1-optimal threshold in info.json and writes
the report, as after a training run.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ccl.data.image_ops import resize_image
from shard_tools.demo_data import DemoSpec, write_demo

SIZE = 64
MODELS = {
    "ccl": ["model.projector=4-cblocks"],
    "joint_rd": ["model.projector=none", "loss.lambda_local=0", "loss.lambda_global=0"],
}
BASE = ["model.teacher=mobilenetv2_100", "model.pretrained=offline", f"data.image_size={SIZE}",
        "eval.batch_size=8", "eval.num_workers=0", "run.seed=3"]


class DeployRuns:
    def __init__(self, root: Path) -> None:
        from shard_tools.build import run as build_shards

        self.root = root
        self.demo = root / "demo_source"
        write_demo(self.demo, spec=DemoSpec(size=SIZE, per_class=4, test_good=2, test_defect=3, seed=0))
        build_shards(["--datasets", "demo", "--root", f"demo={self.demo}", "--out", str(root / "shards"),
                      "--val-fraction", "0.25"])
        self.build = root / "shards" / "demo"
        self._exports: dict[str, Path] = {}
        self._deployed: dict[tuple[str, ...], Path] = {}

    def export(self, name: str) -> Path:
        """The evaluated training export of model ``name`` (info.json holds the image threshold)."""
        if name not in self._exports:
            from pipelines.base.config import load_config
            from pipelines.base.model import build_model, save_export
            from pipelines.evaluation.evaluate import run_evaluation

            cfg = load_config(None, BASE + MODELS[name])
            export = save_export(build_model(cfg).eval(), cfg, self.root / name / "export",
                                 {"step": 2, "class_index": {f"demo/{c}": i for i, c in enumerate(self.classes())},
                                  "datasets": ["demo"]})
            run_evaluation(export, [self.build], self.root / name / "eval", vis=2)
            self._exports[name] = export
        return self._exports[name]

    def deployed(self, name: str, fmt: str, *extra: str) -> Path:
        """``launch/export.py`` of model ``name`` to ``fmt`` (extra CLI arguments); the model file's path."""
        key = (name, fmt, *extra)
        if key not in self._deployed:
            from launch.export import main

            out = self.root / "deploy" / "_".join(k.strip("-") for k in key)
            assert main(["--checkpoint", str(self.export(name)), "--format", fmt, "--out", str(out), *extra]) == 0
            self._deployed[key] = out / {"onnx": "model.onnx", "openvino": "model.xml", "torchscript": "model.pt"}[fmt]
        return self._deployed[key]

    def classes(self) -> list[str]:
        return sorted(p.name for p in self.demo.iterdir() if p.is_dir())

    def test_paths(self) -> list[Path]:
        return sorted(self.demo.glob("*/test/*/*.png"))

    def test_images(self) -> tuple[np.ndarray, np.ndarray, list[Path]]:
        """The demo test set resized to the model size: (N, S, S, 3) uint8 RGB, labels (N,), paths."""
        paths = self.test_paths()
        images = [resize_image(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), SIZE) for p in paths]
        labels = np.array([p.parent.name != "good" for p in paths], int)
        return np.stack(images), labels, paths
