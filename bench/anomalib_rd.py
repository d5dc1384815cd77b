"""anomalib's Reverse Distillation as its own OpenVINO export (fp32), for ``bench/precision.py --anomalib``.

anomalib is never a project dependency: this script runs in an environment of its own, which reuses the
project's torch and openvino and adds anomalib beside them:

    python3 -m venv .venv-anomalib
    echo "$PWD/.venv/lib/python3.11/site-packages" > .venv-anomalib/lib/python3.11/site-packages/project.pth
    .venv-anomalib/bin/pip install anomalib==2.7.0
    .venv-anomalib/bin/python bench/anomalib_rd.py --out runs/bench/anomalib_rd     # writes openvino/model.xml

The model is anomalib's ``ReverseDistillation`` as a user exports it (``to_openvino``: its pre-processing, the
model and its post-processing in one graph, float32 weights): wide_resnet50_2, layers 1-3, 256 px, random
weights (``pre_trained=False``: nothing is downloaded; speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="export root (anomalib writes OUT/weights/openvino/model.xml)")
    p.add_argument("--image-size", type=int, default=256)
    args = p.parse_args()
    import anomalib
    from anomalib.models import ReverseDistillation
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    size = (args.image_size, args.image_size)
    imagenet = Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])  # anomalib's default pre-processing
    transform = Compose([Resize(size, antialias=True), imagenet])
    model = ReverseDistillation(backbone="wide_resnet50_2", pre_trained=False,
                                pre_processor=PreProcessor(transform=transform), evaluator=False, visualizer=False)
    path = model.eval().to_openvino(export_root=Path(args.out), input_size=size)
    print(f"anomalib {anomalib.__version__}: wrote {path}")


if __name__ == "__main__":
    main()
