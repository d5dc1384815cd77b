"""One frozen dataclass config tree: YAML file, then ``a.b=value`` overrides, unknown keys rejected.

    cfg = load_config("configs/demo.yaml", ["train.epochs=3", "data.shards=[a,b]"])
    save_config(cfg, run_dir / "config.yaml")

Override values are parsed as YAML (``[a,b]`` is a list, ``1e-3`` a float, ``full`` a string).
Files may ``include:`` other files (paths relative to the including file); later keys win.

Every numeric field has its range in ``RANGES`` (beside the dataclasses), checked when the config loads:
a value outside it is a ConfigError naming the key (status 2 from every entry point), before any run
starts. Floats must be finite; a float field also takes a string that parses as one (YAML 1.1 reads an
unquoted ``1e-3`` as a string).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pipelines.base.exits import InputError
from shard_format.atomic import write_atomic

# The fixed choices of string fields: a value outside them is refused when the config loads, with the list.
# The library's own registries (ccl.models.projector.PROJECTORS, ccl.losses.global_variants.global_losses, ...)
# must hold the same values: tests/pipelines/base/test_config.py compares them.
Projector = Literal["4-cblocks", "2-cblocks", "2-mlp", "none"]
GlobalLoss = Literal["supcon", "triplet", "npairs", "infonce"]
KdMode = Literal["flat", "pixel"]  # flat (RD4AD) | pixel
LocalPositives = Literal["class", "view"]
LocalNegatives = Literal["window", "all"]
LocalMatch = Literal["projected", "teacher"]
Reduction = Literal["mean", "sum"]
AugmentPreset = Literal["paper", "first-release", "official", "geometric"]
ClassSource = Literal["raw", "pseudo"]
Schedule = Literal["constant", "cosine"]
Precision = Literal["no", "bf16", "fp16"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
WandbMode = Literal["online", "offline", "disabled"]
# The training strategies of the paper's Fig. 1a (pipelines/experiments/strategies.py): one model for every class
# at once (joint: Joint RD or RD + CCL, by the loss), one model per class, or the classes one after another, alone
# (sequential) or with replay of the earlier classes in every batch (continual).
StrategyMode = Literal["joint", "one-for-one", "sequential", "continual"]


class ConfigError(InputError):
    """A config file or override that does not fit the tree."""


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/default"
    name: str = ""
    seed: int = 0
    deterministic: bool = False  # torch deterministic algorithms, fixed worker seeds


@dataclass(frozen=True)
class AugmentConfig:
    """The augmented view of the contrastive losses: a preset (ccl.data.transforms.AUGMENT_PRESETS: paper |
    first-release | official | geometric) whose fields may be overridden one by one (None: the preset's value)."""

    preset: AugmentPreset = "paper"
    crop_scale: tuple[float, float] | None = None  # area fraction of the random crop
    hflip: float | None = None
    vflip: float | None = None
    rotation: float | None = None  # degrees, +-
    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    jitter_p: float | None = None
    grayscale: float | None = None
    blur_p: float | None = None
    blur_sigma: tuple[float, float] | None = None


@dataclass(frozen=True)
class DataConfig:
    shards: tuple[str, ...] = ()  # shard builds (one = domain-in-all, several = all-in-all): folders or s3:// gs:// https://
    # Remote shards are fetched and checked (size, sha256) before they are read: into cache_dir ("" = the
    # system's temp folder), shared by the ranks of a node, kept up to cache_gb (0 = deleted once read).
    cache_dir: str = ""
    cache_gb: float = 0.0
    batch_size: int = 16  # global, over all ranks
    classes_per_batch: int = 8  # P; K = batch_size // P samples per class, K >= 2
    num_workers: int = 2
    image_size: int = 256
    shuffle_buffer: int = 512
    class_source: ClassSource = "raw"
    pseudo_file: str = ""  # sidecar name (beside the shards) or path; "" = pseudo_classes.json
    max_corrupt: int = 100  # abort after this many unreadable or lost samples in one epoch
    plan_ranks: int = 0  # ranks the data plan is cut for (0 = world size); a multiple of the world size
    # gives the same global batches on any world size that divides it (see pipelines/data/train_data.py)
    # Train and validate on these classes only ("dataset/class"; () = all): copies of those classes' records,
    # made once under RUN/data (shard_format/subset.py), so every exactly-once guarantee holds unchanged.
    classes: tuple[str, ...] = ()
    # Replay (continual training): replay_fraction of every batch is drawn from these classes' training
    # samples, the rest from data.classes. The fraction must give whole classes of K samples per batch.
    replay_classes: tuple[str, ...] = ()
    replay_fraction: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class ModelConfig:
    teacher: str = "wide_resnet50_2"  # any timm model with features_only
    pretrained: str = "hub"  # hub | none | offline | PATH (.pth / .safetensors)
    out_indices: tuple[int, ...] = (1, 2, 3)
    projector: Projector = "4-cblocks"
    projector_residual: bool = False  # teacher + gain * projector(teacher), gain from 0 (starts as Joint RD)
    checkpoint: str = ""  # optional official RD4AD checkpoint (bn.*, decoder.*) to start from
    # The official CCL code's perturbation (not in the paper): with probability noise_prob per training step,
    # Gaussian noise of std noise_std on a random half of the positions of the neck's input. 0 = off.
    noise_prob: float = 0.0
    noise_std: float = 1.0
    # A student conditioned on the image's class (ccl.models.class_condition): the classes are the training's
    # (its merged class index, stored with the export); every image is scored under its own class.
    class_conditioned: bool = False
    condition_inner: bool = False  # the decoder's inner maps are modulated per class too, not only its input


@dataclass(frozen=True)
class LossConfig:
    lambda_local: float = 1.0
    lambda_global: float = 1.0
    temperature: float = 0.1
    local_window: int | Literal["full"] = 1  # odd k or "full"
    local_scales: tuple[int, ...] = (0, 1, 2)  # indices into the teacher's scales
    local_chunk: int = 4096  # anchors per block for windows > 1
    global_loss: GlobalLoss = "supcon"
    kd_mode: KdMode = "flat"
    # Readings of Eq. 2-4 the paper leaves open (ccl/losses/local.py): positives from every same-class view
    # (class) or the sample's other view only (view, the official code); negatives in the window or at every
    # position (all); the positive's position chosen by the projected features or the frozen teacher's.
    local_positives: LocalPositives = "class"
    local_negatives: LocalNegatives = "window"
    local_match: LocalMatch = "projected"
    reduction: Reduction = "mean"  # over the anchors of the contrastive terms (Eq. 4-5 sum)
    contrastive_warmup: int = 0  # optimizer steps over which lambda1 and lambda2 ramp up from 0
    # A class-conditioned student (model.class_conditioned) decoding under another class must miss the
    # teacher's maps by wrong_class_margin more than under its own (ccl.losses.wrong_class). 0 = off.
    lambda_wrong_class: float = 0.0
    wrong_class_margin: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    max_steps: int = 0  # stop after N optimizer steps; 0 = no limit
    lr_projector: float = 0.001
    lr_rest: float = 0.005
    lr_reference_batch: int = 16  # lrs are scaled by batch_size / this; 0 = no scaling
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    grad_clip: float = 0.0  # max grad norm; 0 = off
    grad_accum: int = 1
    precision: Precision = "no"  # (DDP: autocast; DeepSpeed: its own casting; losses in float32)
    compile: bool = False  # torch.compile the student path (projector, neck, decoder)
    compile_backend: str = "inductor"  # any of torch.compiler.list_backends()
    compile_mode: CompileMode = "default"  # inductor's modes
    patience: int = 10  # early stopping: validations without improvement; 0 = off
    # Early stopping judges a smoothed validation loss: s = val_smoothing * s + (1 - val_smoothing) * loss
    # (0 = the raw loss), and never stops before min_epochs. The best export is still the lowest raw loss.
    min_epochs: int = 0
    val_smoothing: float = 0.0
    # Start the student (projector, neck, decoder) from an export's weights: sequential and continual stages,
    # and new classes added to a trained model. The teacher and the model's shape must match the export's.
    init_from: str = ""
    val_every: int = 1  # epochs
    eval_every: int = 0  # epochs between test-set evaluations; 0 = never during training
    ckpt_every: int = 1  # epochs
    nan_tolerance: int = 5  # consecutive non-finite losses before aborting
    log_every: int = 10  # steps
    sync_bn: bool = True  # BatchNorm statistics over the global batch when world size > 1
    debug_checksums: bool = False  # write per-rank parameter digests and losses to RUN/debug/
    progress: bool = True  # tqdm bar on the main process
    # Seconds a collective may wait for a peer before this rank fails (training and evaluation): a silent or
    # dead peer is noticed in minutes, not after torch's 30. Long one-rank phases (t-SNE, exports) must fit.
    collective_timeout: float = 300.0
    # Seconds a rank may stay blocked in one native call (a collective whose peer is gone) after SIGTERM
    # before it exits at once with 143; a rank that can run Python stops gracefully instead.
    sigterm_grace: float = 30.0


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 32
    num_workers: int = 2
    sigma: float = 4.0
    bins: int = 4096
    fpr_limit: float = 0.3
    vis: int = 8  # heatmaps for the N highest- and lowest-scoring images per group
    max_images: int = 0  # score at most N test images (0 = all), for quick looks
    classes: tuple[str, ...] = ()  # score only these "dataset/class" (e.g. a one-class RD4AD checkpoint); () = all
    allow_partial: bool = False  # write metrics when test samples are lost or unreadable (never a threshold)


@dataclass(frozen=True)
class WandbConfig:
    mode: WandbMode = "disabled"
    project: str = "ccl"
    entity: str = ""
    tags: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class TrackingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    vis_images: int = 8  # fixed validation/test images rendered at each eval interval
    tsne: bool = True
    vis_every: int = 1  # epochs between heatmaps / class separation / t-SNE (0 = never)
    max_features: int = 2000  # validation global features kept for K-means / t-SNE


@dataclass(frozen=True)
class StrategyConfig:
    """How the classes are trained (pipelines/experiments/strategies.py); joint is one ordinary training."""

    mode: StrategyMode = "joint"
    order: tuple[str, ...] = ()  # class order of sequential / continual ("dataset/class"); () = sorted names
    stage_epochs: int = 0  # epochs of each class model or stage; 0 = train.epochs
    replay_fraction: float = 0.25  # continual: the share of every batch drawn from the earlier classes


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)


# ---------------------------------------------------------------- ranges of the numeric fields


@dataclass(frozen=True)
class Range:
    """The values a numeric field takes: bounds (closed unless marked open), an optional step; floats finite.
    ``text`` replaces the generated description where a unit says more (seconds)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    multiple_of: int = 0
    text: str = ""

    def describe(self) -> str:
        if self.text:
            return self.text
        step = f"a multiple of {self.multiple_of} " if self.multiple_of else ""
        lo, hi = _number(self.lo), _number(self.hi)
        if self.lo is not None and self.hi is not None:
            return f"{step}in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{step}{'>' if self.lo_open else '>='} {lo}"
        return f"{step}{'<' if self.hi_open else '<='} {hi}"

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return not (self.multiple_of and value % self.multiple_of)


def _number(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


COUNT = Range(0)  # 0 means "off", "none" or "all" where the field says so
AT_LEAST_1 = Range(1)
PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, hi_open=True)  # a share that must leave something (1 would leave nothing)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, lo_open=True)
SECONDS = Range(0, lo_open=True, text="a positive number of seconds")

# Field -> range, by dataclass. Every int and float field (and the numbers in their tuples) is listed:
# tests/pipelines/base/test_config.py checks that none is missing.
RANGES: dict[type, dict[str, Range]] = {
    RunConfig: {"seed": Range(0, 2**32 - 1)},  # numpy's legacy seeding takes 32 bits
    AugmentConfig: {
        "crop_scale": Range(0, 1, lo_open=True), "hflip": PROBABILITY, "vflip": PROBABILITY,
        "rotation": Range(0, 180), "brightness": PROBABILITY, "contrast": PROBABILITY, "saturation": PROBABILITY,
        "hue": Range(0, 0.5), "jitter_p": PROBABILITY, "grayscale": PROBABILITY, "blur_p": PROBABILITY,
        "blur_sigma": Range(0, 100, lo_open=True)},
    DataConfig: {
        "batch_size": AT_LEAST_1, "classes_per_batch": AT_LEAST_1, "num_workers": Range(0, 256),
        # The teacher's coarsest scale used (out_indices up to 3) is 1/16 and the neck halves it once more:
        # 32 px is the smallest image the model runs at; 4096 px keeps one image's features within memory.
        "image_size": Range(32, 4096, multiple_of=32), "shuffle_buffer": COUNT, "max_corrupt": COUNT,
        "plan_ranks": COUNT, "replay_fraction": FRACTION, "cache_gb": NON_NEGATIVE},
    ModelConfig: {"out_indices": Range(0, 8), "noise_prob": PROBABILITY, "noise_std": NON_NEGATIVE},
    LossConfig: {
        "lambda_local": NON_NEGATIVE, "lambda_global": NON_NEGATIVE, "temperature": POSITIVE,
        "local_window": AT_LEAST_1, "local_scales": Range(0, 8), "local_chunk": AT_LEAST_1,
        "contrastive_warmup": COUNT, "lambda_wrong_class": NON_NEGATIVE, "wrong_class_margin": NON_NEGATIVE},
    TrainConfig: {
        "epochs": AT_LEAST_1, "max_steps": COUNT, "lr_projector": NON_NEGATIVE, "lr_rest": NON_NEGATIVE,
        "lr_reference_batch": COUNT, "betas": FRACTION, "weight_decay": NON_NEGATIVE, "warmup_steps": COUNT,
        "grad_clip": NON_NEGATIVE, "grad_accum": AT_LEAST_1, "patience": COUNT, "min_epochs": COUNT,
        "val_smoothing": FRACTION, "val_every": AT_LEAST_1, "eval_every": COUNT, "ckpt_every": AT_LEAST_1,
        "nan_tolerance": AT_LEAST_1, "log_every": AT_LEAST_1, "collective_timeout": SECONDS,
        "sigterm_grace": SECONDS},
    EvalConfig: {
        "batch_size": AT_LEAST_1, "num_workers": Range(0, 256), "sigma": Range(0, 256, lo_open=True),
        "bins": Range(2, 1 << 24), "fpr_limit": Range(0, 1, lo_open=True), "vis": COUNT, "max_images": COUNT},
    TrackingConfig: {"vis_images": COUNT, "vis_every": COUNT, "max_features": COUNT},
    StrategyConfig: {"stage_epochs": COUNT, "replay_fraction": FRACTION},
}


def check_range(cls: type, name: str, value: Any, where: str) -> None:
    """ConfigError when the numbers of field ``name`` of ``cls`` (one, or a tuple of them) are out of range."""
    bounds = RANGES.get(cls, {}).get(name)
    if bounds is None:
        return
    numbers = value if isinstance(value, tuple) else (value,)
    for number in numbers:
        if isinstance(number, (int, float)) and not isinstance(number, bool) and not bounds.admits(number):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{where}={shown!r} must be {bounds.describe()}")


# ---------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file (with includes) <- ``a.b=value`` overrides, validated into ``Config``."""
    tree: dict[str, Any] = {}
    if path is not None:
        tree = _read_yaml(Path(path), seen=())
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    where = str(path) if path is not None else "overrides"
    return from_dict(Config, tree, where)


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form a.b=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
    return key.strip(), value


def from_dict(cls: type, tree: dict[str, Any], where: str = "config", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: {prefix or 'top level'} must be a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(tree) - set(names))
    if unknown:
        valid = ", ".join(prefix + n for n in names)
        raise ConfigError(f"{where}: unknown key(s) {[prefix + u for u in unknown]}; valid here: {valid}")
    kwargs = {}
    for name in names:
        if name not in tree:
            continue
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = from_dict(typ, tree[name] or {}, where, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(tree[name], typ, f"{where}: {prefix}{name}")
            check_range(cls, name, kwargs[name], f"{where}: {prefix}{name}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML, JSON and W&B."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def replace(cfg: Any, **dotted: Any) -> Any:
    """``replace(cfg, **{"train.epochs": 3})``: a copy with dotted keys changed and re-validated."""
    tree = to_dict(cfg)
    for key, value in dotted.items():
        _set_dotted(tree, key, value)
    return from_dict(type(cfg), tree, "replace")


# ---------------------------------------------------------------- helpers


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: include cycle")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    includes = tree.pop("include", [])
    includes = [includes] if isinstance(includes, str) else includes
    merged: dict[str, Any] = {}
    for inc in includes:
        _deep_update(merged, _read_yaml(path.parent / inc, seen + (path.resolve(),)))
    _deep_update(merged, tree)
    return merged


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is none of {[_type_name(a) for a in args]}")
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        hint = " (YAML reads an unquoted no/yes/off/on as true/false: quote it)" if isinstance(value, bool) else ""
        raise ConfigError(f"{where}={value!r} is not one of {list(args)}{hint}")
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and args[-1] is Ellipsis:
            value = [value]  # a scalar where a list is expected: a one-element list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if typ is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected nothing (null), got {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string: take what parses as a float
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {typ}")


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(typ))
    return getattr(typ, "__name__", str(typ))
