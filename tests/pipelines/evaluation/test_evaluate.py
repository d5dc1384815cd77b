"""The evaluator on one process: metrics of a real model against an independent exact computation,
reports, bad input, the exactly-once plan and loader, and the standalone --maps/--masks mode."""

from __future__ import annotations

import csv
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ccl.metrics import METRICS
from pipelines.base.config import replace
from pipelines.base.exits import InputError
from pipelines.base.model import load_export, read_info
from pipelines.data.eval_data import eval_loader, eval_plan
from pipelines.evaluation.evaluate import evaluate_maps, evaluate_model, run_evaluation
from shard_format.builds import open_builds
from shard_format.errors import ShardError
from shard_format.schema import SchemaError, safe_name
from tests.ccl.test_metrics import exact_metrics
from tests.pipelines.shard_fixtures import eval_view, tar_keys, tiny_export, write_test_build

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE = 64


class FakeTracker:
    """What pipelines.base.tracking.Tracker receives, recorded."""

    def __init__(self) -> None:
        self.scalars, self.tables, self.images, self.steps = {}, {}, {}, set()

    def log(self, scalars: dict, step: int) -> None:
        self.scalars.update(scalars)
        self.steps.add(step)

    def log_table(self, name: str, columns: list, rows: list, step: int) -> None:
        self.tables[name] = rows

    def log_images(self, name: str, images: list, step: int) -> None:
        self.images[name] = images


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("eval")
    builds = [write_test_build(tmp / "mvtec", "mvtec", ["bottle", "cable"], [6, 3, 5], size=40),
              write_test_build(tmp / "visa", "visa", ["pcb"], [6], size=48, seed=1)]
    export = tiny_export(tmp / "run" / "export", SIZE)
    model, cfg = load_export(export)
    return {"tmp": tmp, "builds": builds, "export": export, "model": model, "cfg": cfg}


def read_test_samples(builds: list[Path]):
    """(key, meta, resized image tensor, resized mask) of every test sample, read from the tars directly."""
    for build in builds:
        for path in sorted(build.glob("test-*.tar")):
            with tarfile.open(path) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
            for name in sorted(n for n in members if n.endswith(".json")):
                key = name[: -len(".json")]
                meta = json.loads(members[name])
                image = cv2.cvtColor(cv2.imdecode(np.frombuffer(members[key + ".png"], np.uint8), 1), cv2.COLOR_BGR2RGB)
                mask_bytes = members.get(key + ".mask.png")
                mask = (cv2.imdecode(np.frombuffer(mask_bytes, np.uint8), 0) >= 128 if mask_bytes
                        else np.zeros(image.shape[:2], bool))
                yield (key, meta, *eval_view(image, mask, SIZE))


def reference(model: torch.nn.Module, builds: list[Path]) -> dict[str, dict]:
    """Exact per-group metrics from the tars read directly, scored one image at a time."""
    per_group: dict[str, list] = {}
    for _, meta, x, m in read_test_samples(builds):
        with torch.no_grad():
            amap = model(x[None])["anomaly_map"][0].numpy()
        per_group.setdefault(f"{meta['dataset']}/{meta['group']}", []).append((amap, m.numpy(), meta["label"]))
    out = {}
    for group, items in per_group.items():
        maps = np.stack([a for a, _, _ in items])
        out[group] = exact_metrics(maps, [m for _, m, _ in items], np.array([lab for _, _, lab in items]))
    return out


@pytest.mark.slow
def test_model_metrics_match_an_independent_exact_computation(setup: dict) -> None:
    model, cfg = setup["model"], setup["cfg"]
    out = setup["tmp"] / "single"
    tracker = FakeTracker()
    result = evaluate_model(model, setup["builds"], cfg, None, out, tracker=tracker, step=5, vis=2)
    want = reference(model, setup["builds"])
    assert sorted(result["per_group"]) == sorted(want) == ["mvtec/bottle", "mvtec/cable", "visa/pcb"]
    for group, metrics in want.items():
        for metric in METRICS:
            assert result["per_group"][group][metric] == pytest.approx(metrics[metric], abs=1e-3), (group, metric)
    assert result["images"] == result["expected"] == 20 and result["skipped"] == []
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mean"] == pytest.approx(result["mean"])
    md = (out / "metrics.md").read_text()
    assert "| mvtec/bottle |" in md and "**mean mvtec**" in md and "**mean visa**" in md
    assert md.splitlines()[0].split("|")[2:5] == [" I-AUROC ", " P-AUROC ", " AUPRO "]
    assert {p.name for p in (out / "curves").iterdir()} == {"mvtec.png", "visa.png"}
    heatmaps = sorted(p.name[:5] for p in (out / "heatmaps" / "mvtec" / "bottle").iterdir())
    assert heatmaps == ["botto", "botto", "top00", "top01"]
    with open(out / "image_scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["key"] for r in rows) == sorted(tar_keys(setup["builds"][0]) + tar_keys(setup["builds"][1]))
    assert tracker.scalars["eval/I-AUROC"] == pytest.approx(result["mean"]["I-AUROC"]) and tracker.steps == {5}
    assert tracker.scalars["eval/visa/P-AUROC"] == pytest.approx(result["per_dataset"]["visa"]["P-AUROC"])
    assert [row[0] for row in tracker.tables["eval/metrics"]][:3] == ["mvtec/bottle", "mvtec/cable", "visa/pcb"]
    assert sorted(tracker.images) == [
        "eval/heatmaps/mvtec/bottle", "eval/heatmaps/mvtec/cable", "eval/heatmaps/visa/pcb"]
    assert all(len(v) == 4 and v[0][0].dtype == np.uint8 for v in tracker.images.values())
    top = max((r for r in rows if r["group"] == "mvtec/bottle"), key=lambda r: float(r["score"]))
    top_file = next((out / "heatmaps" / "mvtec" / "bottle").glob("top00_*"))
    assert top_file.name.endswith(top["key"].split("/")[-1] + ".png")


@pytest.mark.slow
def test_a_corrupt_sample_fails_the_evaluation_unless_partial_results_are_allowed(setup: dict) -> None:
    build = write_test_build(setup["tmp"] / "broken", "mvtec", ["bottle"], [4, 4], size=40, corrupt=[5])
    out = setup["tmp"] / "broken_eval"
    info = read_info(setup["export"])
    with pytest.raises(ShardError, match=r"1 of 8 test samples were not scored .*img00005.*eval.allow_partial"):
        run_evaluation(setup["export"], [build], out, vis=0)
    assert not (out / "metrics.json").exists() and read_info(setup["export"]) == info  # nothing partial written
    result = run_evaluation(setup["export"], [build], out, vis=0, overrides=["eval.allow_partial=true"])
    assert (result["images"], result["expected"], result["missing"], result["complete"]) == (7, 8, 1, False)
    assert len(result["skipped"]) == 1
    assert "img00005" in result["skipped"][0] and "test-000001.tar" in result["skipped"][0]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["complete"] is False and saved["missing"] == 1 and saved["threshold"] is None
    assert read_info(setup["export"]) == info  # never a threshold from a partial set


@pytest.mark.slow
def test_run_evaluation_stores_the_threshold_of_a_complete_set(setup: dict) -> None:
    out = setup["tmp"] / "complete_eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"stale": true}')  # an earlier run's outputs are set aside, not kept as ours
    (out / "heatmaps" / "mvtec" / "gone").mkdir(parents=True)
    result = run_evaluation(setup["export"], setup["builds"][1:], out, vis=0)
    assert result["complete"] and result["missing"] == 0 and result["images"] == 6
    assert read_info(setup["export"])["image_threshold"] == pytest.approx(result["threshold"])
    assert read_info(setup["export"])["image_threshold_source"]["images"] == 6
    (previous,) = out.glob("previous-*")
    assert json.loads((previous / "metrics.json").read_text()) == {"stale": True}
    assert (previous / "heatmaps" / "mvtec" / "gone").is_dir() and not (out / "heatmaps" / "mvtec").exists()
    assert json.loads((out / "metrics.json").read_text())["complete"] is True


@pytest.mark.slow
def test_truncated_shard_counts_its_lost_samples(setup: dict) -> None:
    build = write_test_build(setup["tmp"] / "trunc", "mvtec", ["bottle"], [4, 4], size=40)
    shard = build / "test-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1500])  # cut inside the first sample
    with pytest.raises(ShardError, match="4 of 8 test samples were not scored"):
        evaluate_model(setup["model"], [build], setup["cfg"], None, None, vis=0)
    cfg = replace(setup["cfg"], **{"eval.allow_partial": True})
    result = evaluate_model(setup["model"], [build], cfg, None, None, vis=0)
    assert result["images"] == 4 and result["missing"] == 4  # the intact shard; the lost ones are counted
    assert any("test-000000.tar" in m and "4 planned sample(s) lost" in m for m in result["skipped"])
    with pytest.raises(ShardError,
                       match=r"test-000000.tar listed in .*manifest.json does not exist \(1 test shard\(s\) missing"):
        shard.unlink()
        run_evaluation(setup["export"], [build], setup["tmp"] / "trunc_eval", vis=0)


def test_a_quick_look_is_never_complete_and_only_lost_samples_fail() -> None:
    from pipelines.evaluation.evaluate import check_complete

    def result(images: int, expected: int | None) -> dict:
        return {"images": images, "expected": expected, "skipped": [], "threshold": 0.5}

    quick = result(10, 10)
    check_complete(quick, allow_partial=False, quick_look=True)  # eval.max_images: no threshold is stored
    assert (quick["missing"], quick["complete"], quick["threshold"]) == (0, False, 0.5)
    unknown = result(7, None)  # eval.max_images with eval.classes: the manifests cannot say how many
    check_complete(unknown, allow_partial=False, quick_look=True)
    assert (unknown["missing"], unknown["complete"]) == (None, False)
    with pytest.raises(ShardError, match="3 of 10 test samples were not scored"):
        check_complete(result(7, 10), allow_partial=False)


@pytest.mark.slow
def test_heatmap_folders_from_shard_json_stay_inside_out(setup: dict, tmp_path: Path) -> None:
    """Names from the records become paths: an escaping group is refused as a bad record; the rest are
    sanitised before any folder is made."""
    build = write_test_build(tmp_path / "evil", "mvtec", ["bottle", "cable"], [4], size=40)
    shard = build / "test-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    rewritten = []
    for m, data in members:
        if m.name.endswith(".json") and b'"bottle"' in data:
            meta = json.loads(data)
            meta["group"] = "../../../escaped"
            data = json.dumps(meta).encode()
        rewritten.append((m.name, data))
    from tests.pipelines.shard_fixtures import tar_bytes

    shard.write_bytes(tar_bytes([[item] for item in rewritten]))
    cfg = replace(setup["cfg"], **{"eval.allow_partial": True})
    out = tmp_path / "deep" / "er" / "out"
    result = evaluate_model(setup["model"], [build], cfg, None, out, vis=2)
    assert result["missing"] == 2 and all("not a plain name" in m for m in result["skipped"])
    assert not list(tmp_path.rglob("escaped*"))
    assert sorted(p.relative_to(out).parts[:3] for p in out.rglob("*.png") if "heatmaps" in p.parts) == \
        [("heatmaps", "mvtec", "cable")] * 4
    # the writer's own guard, for names that reach it
    assert safe_name("a/../b") == "a_.._b" and safe_name("x\x00y") == "x_y"
    with pytest.raises(SchemaError):
        safe_name("..")


def test_a_truncated_export_is_one_line_naming_the_file(setup: dict, tmp_path: Path, capsys) -> None:
    import shutil

    from launch.evaluate import main

    broken = tmp_path / "export"
    shutil.copytree(setup["export"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    assert main(["--checkpoint", str(broken), "--shards", str(setup["builds"][1]), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {weights}: not a readable safetensors file") and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # failed before anything was written


def test_bad_input_names_the_problem(setup: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        run_evaluation(tmp_path / "nope", setup["builds"])
    with pytest.raises(ShardError, match="missing"):
        run_evaluation(setup["export"], [tmp_path / "missing"])
    (tmp_path / "maps" / "a").mkdir(parents=True)
    (tmp_path / "masks" / "a").mkdir(parents=True)
    np.save(tmp_path / "maps" / "a" / "x.npy", np.zeros((8, 8), np.float32))
    cv2.imwrite(str(tmp_path / "masks" / "a" / "x.png"), np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError, match=r"x\.npy.*differ in size"):
        evaluate_maps(tmp_path / "maps", tmp_path / "masks", None)


@pytest.mark.parametrize("sizes,ranks,workers,limit", [([5, 2, 4], 2, 2, 0), ([3], 2, 2, 0), ([1, 1], 3, 2, 0),
                                                        ([7, 0, 9, 2], 4, 3, 0), ([5, 2, 4], 2, 2, 6)])
def test_plan_covers_every_sample_once(tmp_path: Path, sizes: list[int], ranks: int, workers: int, limit: int) -> None:
    build = write_test_build(tmp_path / "b", "d", ["c"], sizes, size=8)
    plan = eval_plan(open_builds([build]), ranks, workers, limit)
    seen = Counter((r.url, i) for rank in plan for seg in rank for r in seg.ranges for i in range(r.start, r.stop))
    total = sum(sizes) if not limit else limit
    assert len(seen) == total and set(seen.values()) == {1}
    assert [len(rank) for rank in plan] == [workers] * ranks


def test_two_ranks_with_two_workers_read_each_key_once(tmp_path: Path) -> None:
    build = write_test_build(tmp_path / "b", "mvtec", ["bottle", "cable"], [5, 2, 4], size=16)
    keys: list[str] = []
    per_rank = []
    for rank in range(2):
        loader = eval_loader(open_builds([build]), 16, batch_size=2, num_workers=2, rank=rank, world=2)
        mine = [k for batch in loader for k in batch.keys]
        per_rank.append(mine)
        keys += mine
    assert sorted(keys) == sorted(tar_keys(build)) and len(set(keys)) == 11
    assert all(len(k) in (5, 6) for k in per_rank)  # near-equal shares


def test_standalone_maps_and_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    want: dict[str, list] = {}
    for group in ("bottle", "cable"):
        for i in range(6):
            mask = np.zeros((24, 24), bool)
            if i % 2:
                mask[rng.integers(0, 12):, rng.integers(0, 12):][:5, :7] = True
            amap = rng.random((24, 24)).astype(np.float32) + 0.5 * mask
            sub = tmp_path / "maps" / group / "test"
            sub.mkdir(parents=True, exist_ok=True)
            if group == "bottle":  # 16-bit PNG: the evaluator must see the same integer values
                amap = np.round(amap * 20000).astype(np.uint16)
                cv2.imwrite(str(sub / f"{i:03d}.png"), amap)
            else:
                np.save(sub / f"{i:03d}.npy", amap)
            if mask.any():  # missing mask = normal image
                (tmp_path / "masks" / group / "test").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(tmp_path / "masks" / group / "test" / f"{i:03d}_mask.png"), mask.astype(np.uint8) * 255)
            want.setdefault(group, []).append((amap.astype(np.float32), mask))
    result = evaluate_maps(tmp_path / "maps", tmp_path / "masks", tmp_path / "out")
    assert result["images"] == 12
    for group, items in want.items():
        exact = exact_metrics(np.stack([a for a, _ in items]), [m for _, m in items],
                              np.array([m.any() for _, m in items], int))
        for metric in METRICS:
            assert result["per_group"][group][metric] == pytest.approx(exact[metric], abs=1e-3), (group, metric)
    assert (tmp_path / "out" / "metrics.md").is_file() and (tmp_path / "out" / "curves" / "all.png").is_file()


@pytest.mark.slow
def test_an_official_rd4ad_checkpoint_is_evaluated_on_its_class_with_torchvision_weights(
        tmp_path: Path, offline_hub, capsys) -> None:
    """configs/rd4ad.yaml + model.checkpoint: the checkpoint's neck and decoder on the tv_in1k teacher, only the
    chosen class scored; the same checkpoint on the default config's teacher (timm's racm_in1k) is refused."""
    from ccl.models import RDCCL
    from launch.evaluate import main

    configs = Path(__file__).resolve().parents[3] / "configs"
    build = write_test_build(tmp_path / "mvtec", "mvtec", ["bottle", "cable"], [6, 4], size=40)
    torch.manual_seed(0)  # build_model's seeded construction, by hand: the (offline, random) teacher is the same
    model = RDCCL(teacher="wide_resnet50_2.tv_in1k", pretrained="hub", projector="none", lambda_local=0,
                  lambda_global=0).eval()
    g = torch.Generator().manual_seed(3)

    def changed(state: dict) -> dict:  # other weights than the model's own, so loading them shows in the maps
        return {k: v + 0.1 * torch.randn(v.shape, generator=g) if k.endswith(".weight") else v
                for k, v in state.items()}

    with torch.no_grad():
        before = {key: float(model(x[None])["score"]) for key, _, x, _ in read_test_samples([build])
                  if "/bottle/" in key}
    ckpt = {"bn": changed(model.neck.state_dict()), "decoder": changed(model.decoder.state_dict())}
    ckpt["bn"]["memory.weight"] = torch.zeros(2)  # dropped, as RD4AD's test script does
    path = tmp_path / "wres50_bottle.pth"
    torch.save(ckpt, path)
    common = [f"model.checkpoint={path}", f"data.image_size={SIZE}", "eval.num_workers=0", "eval.batch_size=4",
              "eval.bins=16384"]
    options = ["--shards", str(build), "--vis", "0"]
    assert main(["--config", str(configs / "rd4ad.yaml"), "--out", str(tmp_path / "eval"), *options,
                 "eval.classes=[mvtec/bottle]", *common]) == 0
    result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert sorted(result["per_group"]) == ["mvtec/bottle"] and result["images"] == result["expected"] == 5
    model.load_state_dict({**{f"neck.{k}": v for k, v in ckpt["bn"].items() if "memory" not in k},
                           **{f"decoder.{k}": v for k, v in ckpt["decoder"].items()}}, strict=False)
    want = reference(model, [build])["mvtec/bottle"]
    for metric in METRICS:
        assert result["per_group"]["mvtec/bottle"][metric] == pytest.approx(want[metric], abs=1e-3), metric
    with open(tmp_path / "eval" / "image_scores.csv") as f:
        scores = {row["key"]: float(row["score"]) for row in csv.DictReader(f)}
    with torch.no_grad():
        expected = {key: float(model(x[None])["score"]) for key, _, x, _ in read_test_samples([build]) if key in scores}
    assert sorted(scores) == sorted(before) and scores == pytest.approx(expected, rel=1e-4)
    assert scores != pytest.approx(before, rel=1e-2)  # the checkpoint's weights, not the model's own
    capsys.readouterr()
    assert main(["--config", str(configs / "mvtec.yaml"), "--out", str(tmp_path / "refused"), *options, *common]) == 2
    err = capsys.readouterr().err
    assert "wide_resnet50_2.tv_in1k" in err and "'wide_resnet50_2.racm_in1k'" in err and str(path) in err
    assert not (tmp_path / "refused" / "metrics.json").exists()
    assert main(["--config", str(configs / "rd4ad.yaml"), *options, "eval.classes=[mvtec/nope]", *common]) == 2
    assert "mvtec/nope" in capsys.readouterr().err


@pytest.mark.slow
def test_only_an_evaluation_of_exactly_the_exports_weights_and_preprocessing_writes_its_threshold(
        setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21 item 7: another sigma, image size, a class subset, or weights swapped in during the evaluation
    write their threshold to their own --out only; the export's own evaluation records what it was computed on."""
    import hashlib

    import pipelines.evaluation.evaluate as evaluation

    export = setup["export"]
    info = read_info(export)
    weights = export / "model.safetensors"
    for n, overrides in enumerate((["eval.sigma=1.0"], ["data.image_size=96"], ["eval.classes=[visa/pcb]"])):
        out = setup["tmp"] / f"other{n}"
        result = run_evaluation(export, setup["builds"][1:], out, vis=0, overrides=overrides)
        assert result["threshold"] is not None, overrides
        assert json.loads((out / "metrics.json").read_text())["threshold"] == pytest.approx(result["threshold"])
        assert read_info(export) == info, overrides

    real = evaluation.evaluate_model
    original = weights.read_bytes()

    def swapped_meanwhile(*args, **kwargs):  # training swaps a newer best export in while this one scores
        result = real(*args, **kwargs)
        weights.write_bytes(original[:-4] + bytes(4))
        return result

    monkeypatch.setattr(evaluation, "evaluate_model", swapped_meanwhile)
    try:
        run_evaluation(export, setup["builds"][1:], setup["tmp"] / "swapped", vis=0)
        assert read_info(export) == info
    finally:
        weights.write_bytes(original)
    monkeypatch.undo()

    result = run_evaluation(export, setup["builds"][1:], setup["tmp"] / "own", vis=0)
    source = read_info(export)["image_threshold_source"]
    assert read_info(export)["image_threshold"] == pytest.approx(result["threshold"])
    assert source["classes"] == ["visa/pcb"] and source["image_size"] == SIZE and source["images"] == 6
    assert source["weights_sha256"] == hashlib.sha256(original).hexdigest() and "sigma" in source


@pytest.mark.slow
def test_eval_classes_match_class_names_the_way_keys_spell_them(setup: dict) -> None:
    """Issue 21 item 12: ``eval.classes=[folder/metal nut]`` scored nothing (raw name against key prefixes)."""
    import dataclasses

    build = write_test_build(setup["tmp"] / "spaces", "folder", ["metal nut", "screw"], [4, 4], size=40)
    for name in ("folder/metal nut", "folder/metal_nut"):
        cfg = dataclasses.replace(setup["cfg"], eval=dataclasses.replace(setup["cfg"].eval, classes=(name,)))
        result = evaluate_model(setup["model"], [build], cfg, None, None, vis=0)
        assert sorted(result["per_group"]) == ["folder/metal nut"] and result["images"] == 4, name


def test_an_unwritable_out_fails_before_any_scoring(setup: dict, tmp_path: Path, capsys) -> None:
    from launch.evaluate import main

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["--checkpoint", str(setup["export"]), "--shards", str(setup["builds"][1]),
                 "--out", str(blocker / "eval")]) == 2
    err = capsys.readouterr().err
    assert "--out is not a writable directory" in err and str(blocker / "eval") in err


@pytest.mark.slow
def test_a_class_conditioned_model_scores_each_image_under_its_class_found_by_name(setup: dict) -> None:
    # numbered unlike the builds' merged index (mvtec/bottle 0, mvtec/cable 1, visa/pcb 2): found by name
    index = {"visa/pcb": 0, "mvtec/cable": 1, "mvtec/bottle": 2}
    export = tiny_export(setup["tmp"] / "conditioned" / "export", SIZE, class_index=index)
    model, cfg = load_export(export)
    result = evaluate_model(model, setup["builds"], cfg, None, setup["tmp"] / "conditioned_eval", vis=0)
    per_group: dict[str, list] = {}
    for _, meta, x, m in read_test_samples(setup["builds"]):
        own = torch.tensor([index[f"{meta['dataset']}/{meta['class_name']}"]])
        with torch.no_grad():
            amap = model(x[None], labels=own)["anomaly_map"][0].numpy()
        per_group.setdefault(f"{meta['dataset']}/{meta['group']}", []).append((amap, m.numpy(), meta["label"]))
    for group, items in per_group.items():
        want = exact_metrics(np.stack([a for a, _, _ in items]), [m for _, m, _ in items],
                             np.array([lab for _, _, lab in items]))
        for metric in METRICS:
            assert result["per_group"][group][metric] == pytest.approx(want[metric], abs=1e-3), (group, metric)
    # a class the model has no normal set for is refused, naming it
    only_mvtec = tiny_export(setup["tmp"] / "conditioned_mvtec" / "export", SIZE,
                             class_index={"mvtec/bottle": 0, "mvtec/cable": 1})
    model, cfg = load_export(only_mvtec)
    with pytest.raises(InputError, match=r"\['visa/pcb'\]: not among the classes"):
        evaluate_model(model, setup["builds"], cfg, None, None, vis=0)
    with pytest.raises(InputError, match="needs its class_index"):
        (export / "info.json").write_text(json.dumps({"step": 0}))
        load_export(export)
