"""Tiny dataset trees in every supported layout, with the gotchas, and what a build must make of them.

Each ``write_*`` function writes a tree and returns an ``Expected``: the samples keyed by
(source, view), and the sources that must be skipped with a word of their reason. Expectations are
written down here from what the fixture wrote, independently of the builder's code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Want:
    class_name: str
    split: str  # "train" (the build may move it to "val") or "test"
    label: int
    defect: str
    mask: np.ndarray | None = None  # bool, at source resolution (of the view for MANTA)
    group: str = ""
    image: np.ndarray | None = None  # pixels at source resolution (of the view), when checked
    exact_mask: bool = True  # False for COCO polygons: rasterisation may take or leave the border pixels


@dataclass
class Expected:
    samples: dict[tuple[str, str], Want] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # source -> a word of the reason


# -- pixels ------------------------------------------------------------------------------------------
def noise(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels > 1 else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def box_mask(h: int, w: int, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def write_image(path: Path, array: np.ndarray, quality: int = 95) -> np.ndarray:
    """Write with cv2 (format from the suffix) and return the pixels as they will decode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ext = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else path.suffix.lower()
    ok, buf = cv2.imencode(ext, array, [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else [])
    assert ok
    path.write_bytes(buf.tobytes())
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def write_mask(path: Path, mask: np.ndarray, value: int = 255) -> None:
    write_image(path, mask.astype(np.uint8) * value)


# -- MVTec AD (also the `folder` layout) --------------------------------------------------------------
def write_mvtec(root: Path, dataset: str = "mvtec", with_ground_truth: bool = True) -> Expected:
    """Two classes (colour and grayscale); masks named <stem>_mask.png. The crack image 001 has no mask,
    so pairing by sorted position would give it 002's mask (and 002 nothing)."""
    exp = Expected()
    for c, (name, channels) in enumerate([("bottle", 3), ("grid", 1)]):
        h, w = 20, 24
        for i in range(5):
            rel = f"{name}/train/good/{i:03d}.png"
            exp.samples[(rel, "")] = Want(name, "train", 0, "good", image=write_image(
                root / rel, noise(h, w, 100 * c + i, channels)))
        for i in range(2):
            rel = f"{name}/test/good/{i:03d}.png"
            write_image(root / rel, noise(h, w, 100 * c + 10 + i, channels))
            exp.samples[(rel, "")] = Want(name, "test", 0, "good")
        for i in range(3):
            rel = f"{name}/test/crack/{i:03d}.png"
            write_image(root / rel, noise(h, w, 100 * c + 20 + i, channels))
            mask = box_mask(h, w, 2 + i, 3 + 2 * i, 9 + i, 12 + 3 * i)
            if i == 1 and with_ground_truth:
                if dataset == "folder":
                    exp.samples[(rel, "")] = Want(name, "test", 1, "crack", None)
                else:
                    exp.skipped[rel] = "mask missing"
                continue
            if with_ground_truth:
                write_mask(root / f"{name}/ground_truth/crack/{i:03d}_mask.png", mask)
            exp.samples[(rel, "")] = Want(name, "test", 1, "crack", mask if with_ground_truth else None)
    return exp


# -- VisA ----------------------------------------------------------------------------------------------
def write_visa_csv(root: Path) -> Expected:
    """Raw VisA: .JPG images, masks holding defect ids 1 and 2 (not 255), split from split_csv/1cls.csv."""
    exp = Expected()
    rows = ["object,split,label,image,mask"]
    for c, name in enumerate(["candle", "pcb1"]):
        h, w = 16, 20
        for i in range(6):
            split = "train" if i < 4 else "test"
            rel = f"{name}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / rel, noise(h, w, 200 + 10 * c + i))
            rows.append(f"{name},{split},normal,{rel},")
            exp.samples[(rel, "")] = Want(name, split, 0, "good")
        for i in range(2):
            rel = f"{name}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{name}/Data/Masks/Anomaly/{i:03d}.png"
            write_image(root / rel, noise(h, w, 300 + 10 * c + i))
            ids = np.zeros((h, w), np.uint8)
            ids[2:6, 3:8] = 1
            ids[9:12, 10 + i:15] = 2  # a second defect id: binarising != 0 keeps both
            write_image(root / mrel, ids)
            rows.append(f"{name},test,anomaly,{rel},{mrel}")
            exp.samples[(rel, "")] = Want(name, "test", 1, "bad", ids != 0)
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return exp


def write_visa_1cls(root: Path) -> Expected:
    """The reorganised tree: 1cls/<cls>/{train/good,test/good,test/bad,ground_truth/bad/<stem>.png}."""
    exp = Expected()
    name, h, w = "capsules", 16, 16
    for split, sub, n in [("train", "train/good", 3), ("test", "test/good", 2)]:
        for i in range(n):
            rel = f"1cls/{name}/{sub}/{i:03d}.JPG"
            write_image(root / rel, noise(h, w, 400 + 10 * len(sub) + i))
            exp.samples[(rel, "")] = Want(name, split, 0, "good")
    rel = f"1cls/{name}/test/bad/000.JPG"
    write_image(root / rel, noise(h, w, 450))
    ids = np.zeros((h, w), np.uint8)
    ids[4:9, 5:11] = 3
    write_image(root / f"1cls/{name}/ground_truth/bad/000.png", ids)
    exp.samples[(rel, "")] = Want(name, "test", 1, "bad", ids != 0)
    return exp


# -- BTAD ----------------------------------------------------------------------------------------------
def write_btad(root: Path) -> Expected:
    """Class 01: .bmp images with .png masks; class 03: .png images with .bmp masks."""
    exp = Expected()
    for c, (name, img_ext, mask_ext) in enumerate([("01", ".bmp", ".png"), ("03", ".png", ".bmp")]):
        h, w = 18, 14
        for split, sub, n in [("train", "train/ok", 3), ("test", "test/ok", 1)]:
            for i in range(n):
                rel = f"{name}/{sub}/{i:04d}{img_ext}"
                pixels = write_image(root / rel, noise(h, w, 500 + 10 * c + 5 * len(sub) + i))
                exp.samples[(rel, "")] = Want(name, split, 0, "good", image=pixels)
        for i in range(2):
            rel = f"{name}/test/ko/{i:04d}{img_ext}"
            pixels = write_image(root / rel, noise(h, w, 600 + 10 * c + i))
            mask = box_mask(h, w, 1 + i, 2, 8 + i, 9)
            write_mask(root / f"{name}/ground_truth/ko/{i:04d}{mask_ext}", mask)
            exp.samples[(rel, "")] = Want(name, "test", 1, "ko", mask, image=pixels)
    return exp


# -- Real-IAD ------------------------------------------------------------------------------------------
def write_realiad(root: Path, nested: bool, resolution: str = "256", jsons: str = "realiad_jsons",
                  train_samples: int = 1) -> Expected:
    """Two categories, 5 views each; an NG-folder sample whose views the json marks OK (normal), and one
    NG view with no mask_path (normal too); ``train_samples`` normal training samples per category."""
    exp = Expected()
    for c, cat in enumerate(["audiojack", "toy_brick"]):
        entries: dict[str, list] = {"train": [], "test": []}
        cat_dir = root / f"realiad_{resolution}" / cat
        samples = [("train", "OK", "S0001", "OK"), ("test", "OK", "S0002", "OK"), ("test", "NG/AK", "S0003", "AK"),
                   ("test", "NG/QS", "S0004", "OK")]
        samples += [("train", "OK", f"S{100 + t:04d}", "OK") for t in range(1, train_samples)]
        for s, (split, folder, sample, anomaly) in enumerate(samples):
            for v in range(1, 6):
                status = "OK" if folder == "OK" else "NG"
                name = f"{cat}_{s:04d}_{status}_C{v}_2023010{v}"
                image_rel = f"{folder}/{sample}/{name}.jpg"
                write_image(cat_dir / image_rel, noise(12, 16, 700 + 100 * c + 10 * s + v))
                entry = {"category": cat, "anomaly_class": anomaly, "image_path": image_rel, "mask_path": None}
                source = f"realiad_{resolution}/{cat}/{image_rel}"
                anomalous = anomaly != "OK" and v != 5  # view C5 of the AK sample has no mask: normal
                defect = folder.split("/")[1] if folder.startswith("NG") else "good"
                if anomalous:
                    mask = box_mask(12, 16, v, 2, v + 5, 10)
                    entry["mask_path"] = f"{folder}/{sample}/{name}_mask.png"
                    write_mask(cat_dir / entry["mask_path"], mask)
                    exp.samples[(source, f"C{v}")] = Want(cat, split, 1, anomaly, mask)
                else:
                    exp.samples[(source, f"C{v}")] = Want(cat, split, 0, defect)
                entries[split].append(entry)
        json_dir = root / jsons / (jsons if nested else "")
        json_dir.mkdir(parents=True, exist_ok=True)
        (json_dir / f"{cat}.json").write_text(json.dumps({"meta": {"prefix": "", "normal_class": "OK"}, **entries}))
    return exp


# -- MANTA ---------------------------------------------------------------------------------------------
def write_manta(root: Path) -> Expected:
    """Five views tiled horizontally. Class 'bolt': masks named like the images; the defect touches
    views 1 and 3 only, so views 0, 2, 4 are normal. Class 'pill': mask names differ (sorted order)."""
    exp = Expected()
    h, vw, views = 10, 8, 5
    for c, (domain, name, same_names) in enumerate([("mech", "bolt", True), ("med", "pill", False)]):
        base = root / domain / name
        for split, phase, n in [("train", "train", 2), ("test", "test-pixel", 1)]:
            for i in range(n):
                rel = f"{domain}/{name}/{phase}/good/{i:03d}.png"
                pixels = write_image(root / rel, noise(h, vw * views, 800 + 10 * c + 5 * n + i))
                for v in range(views):
                    exp.samples[(rel, str(v))] = Want(name, split, 0, "good",
                                                      image=pixels[:, v * vw:(v + 1) * vw])
        for i, defect in enumerate(["crack", "dent"]):
            rel = f"{domain}/{name}/test-pixel/{defect}/{i:03d}.png"
            pixels = write_image(root / rel, noise(h, vw * views, 900 + 10 * c + i))
            mask = np.zeros((h, vw * views), bool)
            mask[2:6, 1 * vw + 2:1 * vw + 6] = True
            mask[3:9, 3 * vw + 1:3 * vw + 5 + i] = True
            mask_name = f"{i:03d}.png" if same_names else f"m{i:02d}.png"
            write_mask(base / "test-pixel" / "mask" / mask_name, mask)
            for v in range(views):
                crop = mask[:, v * vw:(v + 1) * vw]
                label = int(crop.any())
                exp.samples[(rel, str(v))] = Want(name, "test", label, defect, crop if label else None,
                                                  image=pixels[:, v * vw:(v + 1) * vw])
    return exp


# -- COCO-AD -------------------------------------------------------------------------------------------
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # 80 ids


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def write_cocoad(root: Path) -> Expected:
    """Split 1 holds out sorted-id positions 20..39: id 21 (index 19) is normal, id 22 (index 20) is not."""
    from pycocotools import mask as mask_utils

    assert len(COCO_IDS) == 80 and COCO_IDS[19] == 21 and COCO_IDS[20] == 22
    cats = [{"id": i, "name": "traffic light" if i == 10 else f"cat{i}", "supercategory": "x"} for i in COCO_IDS]
    exp = Expected()
    h, w = 20, 24
    ann_id = iter(range(1, 1000))

    def ann(image_id: int, cat: int, area: float, seg, crowd: int = 0) -> dict:
        return {"id": next(ann_id), "image_id": image_id, "category_id": cat, "area": area,
                "segmentation": seg, "iscrowd": crowd, "bbox": [0, 0, 1, 1]}

    def poly(y0: int, x0: int, y1: int, x1: int) -> list:
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    for split, folder in [("train", "train2017"), ("test", "val2017")]:
        images, anns = [], []
        for i in range(6):
            file_name = f"{i:012d}.jpg"
            write_image(root / folder / file_name, noise(h, w, 1000 + 10 * (split == "test") + i))
            images.append({"id": i + 1, "file_name": file_name, "height": h, "width": w})
        src = lambda i, folder=folder: f"{folder}/{i:012d}.jpg"  # noqa: E731
        # image 1: two normal instances, the larger (id 21) names the class
        anns += [ann(1, 21, 50.0, poly(1, 1, 8, 8)), ann(1, 10, 20.0, poly(10, 10, 14, 14))]
        exp.samples[(src(0), "")] = Want("cat21", split, 0, "good", group="coco")
        # image 2: a held-out polygon (id 22) next to a normal 'traffic light' -> train excludes it
        anns += [ann(2, 22, 80.0, poly(2, 3, 12, 15)), ann(2, 10, 10.0, poly(14, 1, 18, 5))]
        if split == "test":
            exp.samples[(src(1), "")] = Want("traffic_light", split, 1, "cat22", box_mask(h, w, 2, 3, 12, 15),
                                             group="coco", exact_mask=False)
        # image 3: held-out crowd RLE (uncompressed) + held-out compressed RLE; only held-out instances
        crowd = box_mask(h, w, 0, 0, 5, 24)
        comp = box_mask(h, w, 10, 4, 16, 9)
        rle = mask_utils.encode(np.asfortranarray(comp.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        anns += [ann(3, 39, 120.0, rle_uncompressed(crowd), crowd=1), ann(3, 40, 30.0, rle)]
        if split == "test":
            exp.samples[(src(2), "")] = Want("cat39", split, 1, "cat39", crowd | comp, group="coco")
        # image 4: normal id 90 only
        anns.append(ann(4, 90, 12.0, poly(3, 3, 7, 9)))
        exp.samples[(src(3), "")] = Want("cat90", split, 0, "good", group="coco")
        # image 5: no annotations -> not part of the benchmark; image 6: normal id 1
        anns.append(ann(6, 1, 40.0, poly(5, 5, 12, 12)))
        exp.samples[(src(5), "")] = Want("cat1", split, 0, "good", group="coco")
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{folder}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return exp


# -- reading builds back -------------------------------------------------------------------------------
def read_build(directory: Path) -> dict[tuple[str, str], dict]:
    """Every sample of a build via WebDataset, keyed by (json source, json view)."""
    import webdataset as wds

    urls = sorted(str(p) for p in directory.glob("*.tar"))
    out = {}
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        meta["__key__"] = sample["__key__"]
        meta["__url__"] = sample["__url__"]
        meta["cls_text"] = sample["cls"].decode()
        ext = "png" if "png" in sample else "jpg"
        meta["image_bytes"] = sample[ext]
        meta["image_ext"] = ext
        meta["image"] = cv2.imdecode(np.frombuffer(sample[ext], np.uint8), cv2.IMREAD_UNCHANGED)
        meta["mask"] = (cv2.imdecode(np.frombuffer(sample["mask.png"], np.uint8), cv2.IMREAD_UNCHANGED)
                        if "mask.png" in sample else None)
        key = (meta["source"], meta["view"])
        assert key not in out, f"two samples for {key}"
        out[key] = meta
    return out


def run_cli(*args: str, env: dict | None = None, script: str = "shard_tools/build.py"
            ) -> subprocess.CompletedProcess:
    """The real command line, as a user types it."""
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def write_cocoad_four_splits(root: Path, per_category: int = 4, size: int = 32) -> dict[int, dict[str, int]]:
    """A COCO tree on which each of the four COCO-AD splits trains a few classes and tests both labels.

    Two categories per held-out block (sorted-id positions 20b + 2 and 20b + 7, b = 0..3). train2017:
    ``per_category`` single-instance images per category, plus one image per block whose large instance
    (block b) shares it with a small one of block b + 1: in the splits holding out neither, its class is
    the large instance's. val2017: one single-instance image per category and one two-block image per
    block. Returns, per split, the expected number of training classes and of test images, normal and
    anomalous, written down from the construction above.
    """
    cats = [{"id": i, "name": f"cat{i}", "supercategory": "x"} for i in COCO_IDS]
    picked = {b: [COCO_IDS[20 * b + 2], COCO_IDS[20 * b + 7]] for b in range(4)}  # block -> category ids
    block_of = {c: b for b, ids in picked.items() for c in ids}
    ann_id = iter(range(1, 10000))
    expected = {k: {"classes": 0, "normal": 0, "anomalous": 0} for k in range(4)}
    for folder, singles in (("train2017", per_category), ("val2017", 1)):
        images, anns, seed = [], [], 5000 + 1000 * (folder == "val2017")
        layouts = [[c] for c in block_of for _ in range(singles)]
        layouts += [[picked[b][0], picked[(b + 1) % 4][1]] for b in range(4)]  # large first, small second
        for n, layout in enumerate(layouts, start=1):
            file_name = f"{n:012d}.jpg"
            pixels = noise(size, size, seed + n)
            for j, cat in enumerate(layout):
                y0, side = 2 + 14 * j, (12 if j == 0 else 6)
                pixels[y0:y0 + side, 4:4 + side] = 40 * (block_of[cat] + 1)
                anns.append({"id": next(ann_id), "image_id": n, "category_id": cat, "area": float(side * side),
                             "segmentation": [[4, y0, 4 + side, y0, 4 + side, y0 + side, 4, y0 + side]],
                             "iscrowd": 0, "bbox": [4, y0, side, side]})
            write_image(root / folder / file_name, pixels)
            images.append({"id": n, "file_name": file_name, "height": size, "width": size})
            if folder == "val2017":
                for k in range(4):
                    expected[k]["anomalous" if any(block_of[c] == k for c in layout) else "normal"] += 1
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{folder}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    for k in range(4):
        expected[k]["classes"] = sum(1 for c, b in block_of.items() if b != k)  # every other picked category
    return expected
