"""Exported models run without the training stack: ONNX Runtime, OpenVINO (and TorchScript) on CPU.

    model = load_deployed("deploy/model.onnx")      # or model.xml (OpenVINO IR), model.pt (TorchScript)
    maps, scores = model(images)                    # (B, S, S, 3) uint8 RGB -> (B, S, S), (B,) float32

This module imports numpy and OpenCV only (ONNX Runtime / OpenVINO when a model of theirs is
loaded; torch only for a TorchScript file): it is what ``predict.py --model`` runs on a line PC.
An export directory holds one model file and ``info.json`` (written by ``pipelines.deploy.export``); a
directory of another version, a model file whose input does not match its info.json, or a file
that does not parse is refused with an error that names the file.

Trust: info.json lists the sha256 of every model file of the export (``files``); a file that differs
(swapped, damaged) is refused by name before any runtime opens it. A TorchScript file is a program (it
can read and write any file when loaded): ``load_deployed`` refuses one unless ``trust_torchscript=True``
(``predict.py --trust-torchscript``); ONNX and OpenVINO IR are graphs their runtimes only evaluate.

Inference runs in the export's precision (info.json ``precision``: fp32, fp16, int8): OpenVINO's CPU plugin
is held to f32 arithmetic for fp32 and INT8 exports (it would otherwise pick bf16 on CPUs that have it,
and the maps then differ from the trained model's in the second decimal), f16 for an fp16 export where
the CPU has fp16 units.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ccl.data.image_ops import normalize_array
from pipelines.base.exits import InputError

DEPLOY_VERSION = 1  # bumped when the layout of an export directory or its graph's interface changes
INFO_NAME = "info.json"
FORMATS = {"onnx": "model.onnx", "openvino": "model.xml", "torchscript": "model.pt"}
PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME, OUTPUT_NAMES = "images", ("anomaly_map", "score")
# torch marks torch.jit deprecated; TorchScript files still trace, save and load (see the README).
JIT_DEPRECATION = r".*torch\.jit.* is deprecated"

# The files each format writes (info.json's "files" lists their sha256): nothing else is hashed or opened.
MODEL_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin"), "torchscript": ("model.pt",)}
TORCHSCRIPT_RISK = ("a TorchScript file is a program: loading it runs whatever code its author put in it "
                    "(reading or writing any file)")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

Run = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class DeployError(InputError):
    """An export directory or model file that cannot be used, or input the model does not take."""


def read_deploy_info(model_path: str | Path) -> dict[str, Any]:
    """The info.json beside an exported model file, checked against this version and the file's name."""
    path = Path(model_path)
    info_path = path.parent / INFO_NAME
    if not path.is_file():
        raise DeployError(f"{path}: no such model file")
    if not info_path.is_file():
        raise DeployError(f"{info_path} is missing: {path.parent} is not an export of launch/export.py")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as err:
        raise DeployError(f"{info_path}: not readable JSON ({err})") from None
    version = info.get("deploy_version") if isinstance(info, dict) else None
    if version != DEPLOY_VERSION:
        raise DeployError(f"{info_path}: export version {version!r}, this code reads version {DEPLOY_VERSION}; "
                          f"export the checkpoint again with launch/export.py")
    if FORMATS.get(info.get("format", "")) != path.name:
        raise DeployError(f"{path}: info.json describes {info.get('format')!r} ({FORMATS.get(info.get('format'))}), "
                          f"not this file")
    check_files(path.parent, info)
    return info


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(directory: Path, info: dict[str, Any]) -> None:
    """Every model file of the export's format is the one info.json lists (sha256); DeployError naming the
    first that is missing from the list or differs (a swapped or damaged file)."""
    info_path = directory / INFO_NAME
    listed = info.get("files")
    if not isinstance(listed, dict):
        raise DeployError(f"{info_path}: no sha256 of the model files (an export of an earlier version): "
                          "export the checkpoint again with launch/export.py")
    for name in MODEL_FILES[info["format"]]:  # fixed names: info.json never chooses which file is read
        want = listed.get(name)
        if not isinstance(want, str) or not _SHA256_RE.match(want):
            raise DeployError(f"{info_path}: no valid sha256 for {name} under 'files'; export the checkpoint again")
        path = directory / name
        if not path.is_file():
            raise DeployError(f"{path} is missing: a file of this {info['format']} export")
        got = file_sha256(path)
        if got != want:
            raise DeployError(f"{path}: sha256 {got[:16]}... differs from {info_path} ({want[:16]}...): the file "
                              "was replaced or damaged after the export; refused")


class DeployedModel:
    """An exported graph with its info: uint8 RGB batches in, anomaly maps and image scores out."""

    def __init__(self, path: str | Path, threads: int | None = None, trust_torchscript: bool = False) -> None:
        self.path = Path(path)
        self.info = read_deploy_info(self.path)
        if self.info["format"] == "torchscript" and not trust_torchscript:
            raise DeployError(f"{self.path}: refused: {TORCHSCRIPT_RISK}; pass --trust-torchscript only for a file "
                              "you exported yourself, or use the ONNX or OpenVINO export (launch/export.py "
                              "--format onnx|openvino), which runs no code of its own")
        self.image_size = int(self.info["image_size"])
        self.batch = None if self.info["batch"] == "dynamic" else int(self.info["batch"])
        self.input_kind = self.info["input"]["kind"]
        self.precision = str(self.info.get("precision", "fp32"))  # exports before precisions existed are fp32
        if self.precision not in PRECISIONS:
            raise DeployError(f"{self.path.parent / INFO_NAME}: precision {self.precision!r}, this code runs "
                              f"{list(PRECISIONS)}")
        self._run, shape = _BACKENDS[self.info["format"]](self.path, threads, self.precision)
        self._check_graph_input(shape)

    def _expected_input(self) -> list[int | None]:
        s = self.image_size
        return [self.batch, s, s, 3] if self.input_kind == "uint8" else [self.batch, 3, s, s]

    def _check_graph_input(self, shape: list[int | None] | None) -> None:
        if shape is not None and shape != self._expected_input():
            raise DeployError(f"{self.path}: the graph takes input {shape}, but {self.path.parent / INFO_NAME} "
                              f"describes {self._expected_input()} (image size {self.image_size}); "
                              f"a model file from another export?")

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8 RGB, already resized to the model size -> maps (B, S, S), scores (B,)."""
        images = np.asarray(images)
        s = self.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise DeployError(f"{self.path} takes (B, {s}, {s}, 3) uint8 RGB images; got {images.dtype} "
                              f"of shape {images.shape}")
        x = images if self.input_kind == "uint8" else normalize_array(images)
        if self.batch is None:
            return self._run(np.ascontiguousarray(x))
        maps, scores = [], []
        for start in range(0, len(x), self.batch):  # a fixed-batch graph: pad the last chunk
            part = x[start:start + self.batch]
            padded = np.concatenate([part, np.zeros((self.batch - len(part),) + part.shape[1:], part.dtype)])
            m, sc = self._run(np.ascontiguousarray(padded))
            maps.append(m[:len(part)])
            scores.append(sc[:len(part)])
        return np.concatenate(maps), np.concatenate(scores)


def load_deployed(path: str | Path, threads: int | None = None, trust_torchscript: bool = False) -> DeployedModel:
    """Open an exported model file; ``threads`` bounds the runtime's intra-op threads (None: its default).
    A TorchScript file runs code when loaded: only with ``trust_torchscript=True``."""
    return DeployedModel(path, threads, trust_torchscript)


# ---------------------------------------------------------------- backends: path -> (run, graph input shape)


def _onnxruntime(path: Path, threads: int | None, precision: str) -> tuple[Run, list[int | None]]:
    ort = _import("onnxruntime", "onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        raise DeployError(f"{path}: not a readable ONNX model ({str(err).strip().splitlines()[0]})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or [o.name for o in session.get_outputs()] != list(OUTPUT_NAMES):
        raise DeployError(f"{path}: not an anomaly-map graph (inputs {[i.name for i in inputs]}, "
                          f"outputs {[o.name for o in session.get_outputs()]})")
    name = inputs[0].name

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = session.run(list(OUTPUT_NAMES), {name: x})
        return maps, scores

    return run, [d if isinstance(d, int) else None for d in inputs[0].shape]


def _openvino(path: Path, threads: int | None, precision: str) -> tuple[Run, list[int | None]]:
    ov = _import("openvino", "openvino")
    weights = path.with_suffix(".bin")
    try:  # parse first: OpenVINO tries every frontend on a broken file and reports none of them clearly
        if ElementTree.parse(path).getroot().tag != "net":
            raise ElementTree.ParseError("the root element is not <net>")
    except ElementTree.ParseError as err:
        raise DeployError(f"{path}: not an OpenVINO IR file ({err})") from None
    if not weights.is_file():
        raise DeployError(f"{weights} is missing: the weights of {path.name}")
    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": openvino_compute(core, precision)}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = core.compile_model(core.read_model(str(path), str(weights)), "CPU", config)
    except RuntimeError as err:
        raise DeployError(f"{path}: OpenVINO cannot load it ({str(err).strip().splitlines()[-1]})") from None
    names = [o.get_any_name() for o in compiled.outputs]
    if len(compiled.inputs) != 1 or names != list(OUTPUT_NAMES):
        raise DeployError(f"{path}: not an anomaly-map graph (outputs {names})")
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = request.infer({0: x})
        return np.array(out[compiled.outputs[0]]), np.array(out[compiled.outputs[1]])

    shape = compiled.inputs[0].get_partial_shape()
    return run, [None if d.is_dynamic else d.get_length() for d in shape]


def openvino_compute(core: Any, precision: str) -> str:
    """The CPU plugin's arithmetic for an export: f16 for an fp16 export where the CPU has fp16 units, else f32
    (an INT8 graph's quantized layers run in INT8 either way; the rest stays in f32)."""
    has_fp16 = "FP16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "f16" if precision == "fp16" and has_fp16 else "f32"


def _torchscript(path: Path, threads: int | None, precision: str) -> tuple[Run, None]:
    torch = _import("torch", "torch (TorchScript needs it; use model.onnx or model.xml without torch)")
    if threads:
        torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=JIT_DEPRECATION, category=FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError) as err:
        raise DeployError(f"{path}: not a readable TorchScript file ({str(err).strip().splitlines()[0]})") from None

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            maps, scores = module(torch.from_numpy(x))
        return maps.numpy(), scores.numpy()

    return run, None  # a traced module does not declare its input shape


_BACKENDS: dict[str, Callable[[Path, int | None, str], tuple[Run, list[int | None] | None]]] = {
    "onnx": _onnxruntime, "openvino": _openvino, "torchscript": _torchscript}


def _import(module: str, what: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise DeployError(f"this model needs {what}: pip install -e '.[deploy]'") from None
