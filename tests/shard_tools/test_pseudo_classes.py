"""Pseudo classes recover clearly separable toy classes, and the sidecars hold the right keys."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from shard_format.schema import make_key, shard_name
from shard_tools import pseudo_classes as pc

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Three classes a random encoder separates easily: distinct colours and textures.
TOY = {"red": ((200, 30, 30), "solid"), "green": ((30, 190, 40), "stripes"), "blue": ((30, 40, 210), "checker")}


def _image(colour: tuple[int, int, int], texture: str, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:32, :32]
    pattern = {"solid": np.ones((32, 32)), "stripes": (xx // 4) % 2, "checker": ((xx // 4 + yy // 4) % 2)}[texture]
    image = np.asarray(colour, np.float32) * (0.5 + 0.5 * pattern[..., None])
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def write_toy_build(root: Path, dataset: str, n_train: int = 8, n_val: int = 2, seed: int = 0) -> list[str]:
    """A minimal shard build (manifest + one tar per split); returns the train keys."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    classes = {f"{dataset}/{name}": i for i, name in enumerate(TOY)}
    shards, train_keys = [], []
    for split, n in (("train", n_train), ("val", n_val)):
        name = shard_name(split, 0)
        with wds.TarWriter(str(root / name)) as sink:
            for j in range(n):
                for cls, (colour, texture) in TOY.items():
                    key = make_key(dataset, cls, split, "good", f"{j:03d}")
                    png = cv2.imencode(".png", cv2.cvtColor(_image(colour, texture, rng), cv2.COLOR_RGB2BGR))[1]
                    meta = dict(dataset=dataset, class_name=cls, class_id=classes[f"{dataset}/{cls}"], group=cls,
                                split=split, label=0, defect="good", view="", source=f"{cls}/{j}.png",
                                width=32, height=32)
                    sink.write({"__key__": key, "png": png.tobytes(), "json": json.dumps(meta).encode(),
                                "cls": str(meta["class_id"]).encode()})
                    train_keys += [key] if split == "train" else []
        data = (root / name).read_bytes()
        shards.append({"name": name, "split": split, "samples": n * len(TOY), "bytes": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"dataset": dataset, "classes": classes, "shards": shards}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return train_keys


def _val_keys(build: Path) -> set[str]:
    return {k for k in _keys_of(build) if "/val/" in k}


def _keys_of(build: Path) -> set[str]:
    shards = pc.open_builds([str(build)])
    return {s["__key__"] for split in ("train", "val") for s in pc.iter_samples(shards.shards(split))}


def test_recovers_separable_classes_and_writes_one_entry_per_sample(tmp_path: Path, capsys) -> None:
    train_keys = write_toy_build(tmp_path / "toy", "toy")
    rc = pc.main(["--shards", str(tmp_path / "toy"), "--k", "3", "--teacher", "resnet18", "--pretrained", "none",
                  "--image-size", "64", "--batch-size", "8", "--workers", "1", "--device", "cpu"])
    assert rc == 0
    sidecar = json.loads((tmp_path / "toy" / "pseudo_classes.json").read_text())
    print(f"toy V-measure {sidecar['v_measure']:.4f}, adjusted Rand {sidecar['adjusted_rand']:.4f}")
    assert sidecar["v_measure"] > 0.9
    assert sidecar["k"] == 3 and sidecar["teacher"] == "resnet18"
    train_labels = {k: v for k, v in sidecar["labels"].items() if "/train/" in k}
    assert sorted(train_labels) == sorted(train_keys)  # exactly one entry per training sample
    assert set(sidecar["labels"]) - set(train_labels) == _val_keys(tmp_path / "toy")
    assert set(sidecar["labels"].values()) == {0, 1, 2}
    # Val images follow their class's cluster (each class maps to one pseudo id).
    by_class: dict[str, set[int]] = {}
    for key, i in sidecar["labels"].items():
        by_class.setdefault(key.split("/")[1], set()).add(i)
    assert all(len(ids) == 1 for ids in by_class.values())
    assert "V-measure" in capsys.readouterr().out


def test_several_builds_share_ids_and_split_keys_per_build(tmp_path: Path) -> None:
    a = write_toy_build(tmp_path / "a", "dsa", n_train=4, n_val=1, seed=1)
    b = write_toy_build(tmp_path / "b", "dsb", n_train=4, n_val=1, seed=2)
    result = pc.pseudo_classes([tmp_path / "a", tmp_path / "b"], k=3, teacher="resnet18", pretrained="none",
                               image_size=48, batch_size=16, workers=1)
    written = pc.write_sidecars(result, [tmp_path / "a", tmp_path / "b"], "pseudo_classes_k3.json")
    assert written == [str(tmp_path / "a" / "pseudo_classes_k3.json"), str(tmp_path / "b" / "pseudo_classes_k3.json")]
    side_a, side_b = (json.loads(Path(p).read_text()) for p in written)
    assert {k for k in side_a["labels"] if "/train/" in k} == set(a)
    assert {k for k in side_b["labels"] if "/train/" in k} == set(b)
    # Joint clustering: the same colour in both datasets gets the same pseudo id.
    assert side_a["labels"]["dsa/red/train/good/000"] == side_b["labels"]["dsb/red/train/good/000"]
    single = pc.write_sidecars(result, [tmp_path / "a", tmp_path / "b"], str(tmp_path / "all.json"))
    assert len(json.loads(Path(single[0]).read_text())["labels"]) == len(side_a["labels"]) + len(side_b["labels"])


def test_too_many_clusters_is_a_clear_error(tmp_path: Path) -> None:
    write_toy_build(tmp_path / "toy", "toy", n_train=1, n_val=0)
    with pytest.raises(ValueError, match="need at least 5 train images"):
        pc.pseudo_classes([tmp_path / "toy"], k=5, teacher="resnet18", pretrained="none", image_size=32,
                          workers=1)


def test_offline_imagenet_mobilenet_also_separates_them(tmp_path: Path) -> None:
    """The pretrained path users without network access take: --teacher mobilenetv2_100 --pretrained offline."""
    write_toy_build(tmp_path / "toy", "toy", n_train=4, n_val=1)
    result = pc.pseudo_classes([tmp_path / "toy"], k=3, teacher="mobilenetv2_100", pretrained="offline",
                               image_size=64, workers=1)
    assert result["v_measure"] > 0.9 and result["teacher"] == "mobilenetv2_100"


def test_default_encoder_is_the_papers_resnet18_final_stage() -> None:
    """ResNet-18 with torchvision's ImageNet weights, its final stage: the very map timm's full network ends in."""
    import timm

    assert pc.DEFAULT_ENCODER == "resnet18.tv_in1k"
    model = pc.load_teacher(pretrained="none")
    assert not any(p.requires_grad for p in model.parameters())
    assert (model.architecture, model.layers, model.channels) == ("resnet18", ["layer4"], [512])
    full = timm.create_model("resnet18", pretrained=False).eval()
    full.load_state_dict(model.body.state_dict(), strict=False)  # the classifier is not part of the encoder
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    (level,) = model(x)
    with torch.no_grad():
        torch.testing.assert_close(level, full.forward_features(x))  # (2, 512, 2, 2): stride 32
    assert pc.load_teacher("resnet18", "none", level=3).layers == ["layer3"]  # another stage on request


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real demo shards (6 classes, 48 train images each, 128 px), as `make demo` builds them."""
    from shard_tools.build import run as build_shards

    out = tmp_path_factory.mktemp("demo_shards")
    build_shards(["--datasets", "demo", "--out", str(out)])
    return out / "demo"


@pytest.mark.slow
@pytest.mark.parametrize("args, weights, layer, dim", [
    # The paper's encoder and stage (its ImageNet weights cannot be downloaded in tests: random weights).
    (["--pretrained", "none"], "random", "layer4", 512),
    # ImageNet weights that ship with the venv: torchvision's MobileNetV2, its final stage.
    (["--teacher", "mobilenetv2_100", "--pretrained", "offline"], "mobilenetv2_100.tv_in1k", "blocks.6", 320),
])
def test_demo_shards_sidecar_records_the_encoder_and_layer_used(demo_build: Path, tmp_path: Path, capsys, args,
                                                                weights: str, layer: str, dim: int) -> None:
    out = tmp_path / "pseudo.json"
    rc = pc.main(["--shards", str(demo_build), "--k", "6", "--image-size", "128", "--workers", "1",
                  "--device", "cpu", "--out", str(out), *args])
    assert rc == 0
    sidecar = json.loads(out.read_text())
    assert (sidecar["weights"], sidecar["layer"], sidecar["feature_dim"], sidecar["level"]) == (weights, layer, dim, -1)
    assert sidecar["teacher"] == ("mobilenetv2_100" if "--teacher" in args else "resnet18.tv_in1k")
    printed = capsys.readouterr().out
    assert f"{weights} {layer} ({dim} channels)" in printed and "V-measure" in printed
    with capsys.disabled():
        print(f"\ndemo shards, {weights} {layer}: V-measure {sidecar['v_measure']:.4f}, "
              f"adjusted Rand {sidecar['adjusted_rand']:.4f} (K = 6 vs the 6 raw classes)")
    assert len(sidecar["labels"]) == sidecar["counts"]["train"] + sidecar["counts"]["val"] == 276 + 12


def test_cli_reports_a_missing_build_without_a_traceback(tmp_path, capsys) -> None:
    from shard_tools.pseudo_classes import main

    assert main(["--shards", str(tmp_path / "nowhere"), "--k", "3", "--pretrained", "none"]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "does not exist" in err and "Traceback" not in err
