"""Determinism, resume after a killed build, bad input, and verify catching broken builds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from shard_tools.build import main
from shard_tools.units import parse_bytes
from shard_tools.verify import main as verify_main
from shard_tools.verify import verify_build
from tests.shard_tools import fixtures as fx
from tests.shard_tools.checks import manifest_of

SMALL = ["--max-shard-bytes", "12000"]  # one or two samples per shard, so there are several shards


def files_of(directory: Path) -> dict[str, bytes]:
    """Every output file (shards, manifest, journal), by name."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def build_args(src: Path, out: Path, *extra: str) -> list[str]:
    return ["--datasets", "mvtec", "--root", f"mvtec={src}", "--out", str(out), *SMALL, *extra]


@pytest.fixture
def mvtec_src(tmp_path: Path) -> Path:
    fx.write_mvtec(tmp_path / "src")
    return tmp_path / "src"


def test_byte_identical_across_runs_and_worker_counts(tmp_path, mvtec_src):
    outs = []
    for i, workers in enumerate(["1", "1", "2"]):
        assert main(build_args(mvtec_src, tmp_path / f"o{i}", "--workers", workers, "--image-size", "12")) == 0
        outs.append(files_of(tmp_path / f"o{i}" / "mvtec"))
    assert len([n for n in outs[0] if n.endswith(".tar")]) >= 4
    assert outs[0] == outs[1] == outs[2]


def test_tar_members_have_fixed_metadata(tmp_path, mvtec_src):
    import tarfile

    assert main(build_args(mvtec_src, tmp_path / "o")) == 0
    with tarfile.open(tmp_path / "o" / "mvtec" / "train-000000.tar") as tar:
        infos = tar.getmembers()
    metadata = {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos}
    assert infos and metadata == {(0, 0, 0, "ccl", "ccl", 0o644)}
    assert [i.name.split(".", 1)[1] for i in infos[:3]] == ["png", "json", "cls"]


# The real build CLI in a child process that is SIGKILLed (no cleanup runs) while its third shard is half
# written: the writer is wrapped here, in the test, to send the signal after that shard's first sample.
KILLED_BUILD = """
import os, signal, sys
from shard_format import writer
from shard_tools import build
add = writer.ShardWriter.add
def add_then_die(self, key, members):
    add(self, key, members)
    if self.name == "train-000002.tar":
        os.kill(os.getpid(), signal.SIGKILL)
writer.ShardWriter.add = add_then_die
sys.exit(build.main(sys.argv[1:]))
"""


def test_resume_after_kill_matches_clean_build(tmp_path, mvtec_src):
    clean, out = tmp_path / "clean", tmp_path / "o"
    assert main(build_args(mvtec_src, clean)) == 0
    killed = subprocess.run([sys.executable, "-c", KILLED_BUILD, *build_args(mvtec_src, out)], cwd=fx.REPO,
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(fx.REPO)))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    d = out / "mvtec"
    finals = sorted(p.name for p in d.glob("*.tar"))
    assert finals == ["train-000000.tar", "train-000001.tar"]
    assert [p.name for p in d.glob(".*.tmp")] == [".train-000002.tar.tmp"]  # partial under a temporary name
    assert not (d / "manifest.json").exists()
    for name in finals:  # every file under a final name is complete
        assert (d / name).read_bytes() == (clean / "mvtec" / name).read_bytes()
    kept = {n: (d / n).stat().st_ino for n in finals}
    assert main(build_args(mvtec_src, out, "--resume")) == 0
    assert files_of(d) == files_of(clean / "mvtec")
    assert {n: (d / n).stat().st_ino for n in finals} == kept  # kept, not rewritten


def test_resume_rebuilds_a_damaged_shard(tmp_path, mvtec_src):
    clean, out = tmp_path / "clean", tmp_path / "o"
    assert main(build_args(mvtec_src, clean)) == 0
    assert main(build_args(mvtec_src, out)) == 0
    damaged = out / "mvtec" / "train-000001.tar"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    assert main(build_args(mvtec_src, out, "--resume")) == 0
    assert files_of(out / "mvtec") == files_of(clean / "mvtec")


def test_resume_with_other_arguments_rebuilds(tmp_path, mvtec_src, capsys):
    out = tmp_path / "o"
    assert main(build_args(mvtec_src, out)) == 0
    assert main(build_args(mvtec_src, out, "--resume", "--image-size", "8")) == 0
    assert "other arguments" in capsys.readouterr().err
    assert verify_build(out / "mvtec") == [] and manifest_of(out / "mvtec")["args"]["image_size"] == 8


def test_script_entry_point_and_verify_cli(tmp_path, mvtec_src):
    res = fx.run_cli(*build_args(mvtec_src, tmp_path / "o"), "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "mvtec" in res.stdout and "train n/a" in res.stdout  # the summary table
    ok = fx.run_cli(str(tmp_path / "o" / "mvtec"), script="shard_tools/verify.py")
    assert ok.returncode == 0 and "OK" in ok.stdout


# -- bad input -------------------------------------------------------------------------------------------
def error_of(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


def test_unknown_dataset_lists_the_known_ones(tmp_path, capsys):
    err = error_of(capsys, ["--datasets", "mvtec,imagenet", "--root", f"mvtec={tmp_path}", "--out", str(tmp_path)])
    assert "imagenet" in err and "btad, cocoad, demo, folder, inspect, lookalike, manta, mvtec, realiad, visa" in err


@pytest.mark.parametrize("dataset", ["mvtec", "visa", "btad", "realiad", "manta", "cocoad", "folder"])
def test_missing_and_empty_roots(tmp_path, capsys, dataset):
    missing = tmp_path / "nope"
    err = error_of(capsys, ["--datasets", dataset, "--root", f"{dataset}={missing}", "--out", str(tmp_path / "o")])
    assert str(missing) in err and "does not exist" in err
    (tmp_path / "empty" / "stuff").mkdir(parents=True)
    err = error_of(capsys, ["--datasets", dataset, "--root", f"{dataset}={tmp_path / 'empty'}", "--out",
                            str(tmp_path / "o")])
    assert "expected" in err and str(tmp_path / "empty") in err


def test_missing_root_argument_and_bad_sizes(tmp_path, capsys):
    assert "needs --root mvtec=DIR" in error_of(capsys, ["--datasets", "mvtec", "--out", str(tmp_path)])
    err = error_of(capsys, ["--datasets", "demo", "--out", str(tmp_path), "--max-shard-bytes", "lots"])
    assert "lots" in err
    assert parse_bytes("256MB") == 256_000_000 and parse_bytes("1GB") == 10**9 and parse_bytes("4096") == 4096


def corrupt_inputs(src: Path) -> tuple[str, str]:
    """Truncate one training image; give one anomaly a mask of another size."""
    bad_image = "bottle/train/good/002.png"
    data = (src / bad_image).read_bytes()
    (src / bad_image).write_bytes(data[: len(data) // 2])
    bad_mask = "grid/test/crack/002.png"
    cv2.imwrite(str(src / "grid/ground_truth/crack/002_mask.png"), np.full((7, 7), 255, np.uint8))
    return bad_image, bad_mask


def test_unreadable_image_and_mask_of_other_size_are_skipped_and_recorded(tmp_path, mvtec_src, capsys):
    bad_image, bad_mask = corrupt_inputs(mvtec_src)
    assert main(build_args(mvtec_src, tmp_path / "o")) == 0
    skipped = {s["source"]: s["reason"] for s in manifest_of(tmp_path / "o" / "mvtec")["skipped"]}
    assert "truncated" in skipped[bad_image]
    assert "7x7" in skipped[bad_mask] and "24x20" in skipped[bad_mask]
    assert bad_image in capsys.readouterr().err  # warned
    got = fx.read_build(tmp_path / "o" / "mvtec")
    assert (bad_image, "") not in got and (bad_mask, "") not in got
    assert verify_build(tmp_path / "o" / "mvtec") == []


def test_strict_makes_a_missing_mask_or_unreadable_image_fatal(tmp_path, mvtec_src, capsys):
    err = error_of(capsys, build_args(mvtec_src, tmp_path / "o", "--strict"))
    assert "bottle/test/crack/001.png: mask missing" in err
    for name in ("bottle", "grid"):  # complete the masks: now the truncated image is the first problem
        fx.write_mask(mvtec_src / name / "ground_truth/crack/001_mask.png", fx.box_mask(20, 24, 1, 1, 5, 5))
    bad_image, _ = corrupt_inputs(mvtec_src)
    err = error_of(capsys, build_args(mvtec_src, tmp_path / "o", "--strict"))
    assert f"{bad_image}: truncated PNG" in err


def test_folder_mask_of_other_size_becomes_image_level(tmp_path, capsys):
    fx.write_mvtec(tmp_path / "src", dataset="folder")
    cv2.imwrite(str(tmp_path / "src/grid/ground_truth/crack/002_mask.png"), np.full((7, 7), 255, np.uint8))
    assert main(["--datasets", "folder", "--root", f"folder={tmp_path / 'src'}", "--out", str(tmp_path / "o")]) == 0
    sample = fx.read_build(tmp_path / "o" / "folder")[("grid/test/crack/002.png", "")]
    assert sample["label"] == 1 and sample["mask"] is None
    assert "image-level" in capsys.readouterr().err


# -- verify catches broken builds ----------------------------------------------------------------------
def test_verify_reports_corrupt_missing_and_stray_shards(tmp_path, mvtec_src, capsys):
    out = tmp_path / "o" / "mvtec"
    assert main(build_args(mvtec_src, tmp_path / "o")) == 0
    shard = out / "test-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF  # inside the first member's data
    shard.write_bytes(bytes(data))
    (out / "train-000001.tar").unlink()
    shutil.copy(out / "val-000000.tar", out / "val-000009.tar")
    problems = verify_build(out)
    text = "\n".join(problems)
    assert "test-000000.tar: sha256" in text and "train-000001.tar: missing" in text
    assert "val-000009.tar: shard file not listed" in text and "counts" in text
    assert verify_main([str(out)]) == 1
    assert "problem" in capsys.readouterr().err


def test_verify_reports_a_non_binary_mask(tmp_path, mvtec_src):
    """A shard re-written by hand with a grey mask (and a matching manifest) still fails verify."""
    out = tmp_path / "o" / "mvtec"
    assert main(build_args(mvtec_src, tmp_path / "o", "--max-shard-bytes", "1MB")) == 0
    _rewrite_members(out / "test-000000.tar", out, _masks_replaced(np.full((20, 24), 128, np.uint8)))
    problems = verify_build(out)
    assert problems and all("not binary" in p for p in problems)


def test_verify_reports_a_truncated_shard(tmp_path, mvtec_src):
    out = tmp_path / "o" / "mvtec"
    assert main(build_args(mvtec_src, tmp_path / "o")) == 0
    shard = out / "test-000000.tar"
    shard.write_bytes(shard.read_bytes()[:1500])  # cut inside a member
    text = "\n".join(verify_build(out))
    assert "test-000000.tar" in text and "not a readable tar" in text


def _rewrite_members(path: Path, out: Path, change) -> None:
    """Re-write shard ``path`` with ``change(name, data) -> data`` applied to every member, and make the
    manifest's size and checksum match again (so only verify's content checks can object)."""
    import hashlib
    import io
    import json
    import tarfile

    with tarfile.open(path) as tar:
        members = [(i, tar.extractfile(i).read()) for i in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            data = change(info.name, data)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    manifest = manifest_of(out)
    for s in manifest["shards"]:
        if s["name"] == path.name:
            s["sha256"], s["bytes"] = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size
    (out / "manifest.json").write_text(json.dumps(manifest))


def _masks_replaced(mask: np.ndarray):
    png = cv2.imencode(".png", mask)[1].tobytes()
    return lambda name, data: png if name.endswith(".mask.png") else data


def test_verify_reports_an_anomalous_sample_with_an_empty_mask(tmp_path, mvtec_src):
    out = tmp_path / "o" / "mvtec"
    assert main(build_args(mvtec_src, tmp_path / "o", "--max-shard-bytes", "1MB")) == 0
    _rewrite_members(out / "test-000000.tar", out, _masks_replaced(np.zeros((20, 24), np.uint8)))
    problems = verify_build(out)
    assert problems and all("anomalous sample with an empty mask" in p for p in problems)


def test_a_tiny_defect_survives_resizing_as_one_pixel():
    from ccl.data.image_ops import resize_mask  # the builder resizes with the library's rule

    mask = np.zeros((200, 240), bool)
    mask[101, 37] = True  # 1 source pixel: covers 1/400 of a 12 x 12 output pixel
    small = resize_mask(mask, 12)
    assert small.sum() == 1 and tuple(np.argwhere(small)[0]) == (101 * 12 // 200, 37 * 12 // 240)
    big = np.zeros((200, 240), bool)
    big[40:160, 60:200] = True  # large defects are binarised at 0.5 as before, nothing added
    area = cv2.resize(big.astype(np.float32), (12, 12), interpolation=cv2.INTER_AREA)
    assert np.array_equal(resize_mask(big, 12), area >= 0.5)
    assert not resize_mask(np.zeros((50, 50), bool), 12).any()  # a normal mask stays empty


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.update(shards=["train-000000.tar"]), "shards[0] must be an object"),
    (lambda m: m["shards"][0].pop("sha256"), "shards[0] lacks ['sha256']"),
    (lambda m: m["shards"][0].update(name="pipe:touch /tmp/x"), "is not a shard file name of this build"),
    (lambda m: m["shards"][0].update(samples="3"), "shards[0].samples must be a count"),
    (lambda m: m.update(classes=["a"]), "classes must map"),
    (lambda m: m.pop("shards"), "manifest lacks 'shards'"),
])
def test_verify_reports_a_manifest_of_the_wrong_structure(tmp_path, mvtec_src, capsys, mutate, message):
    import json

    out = tmp_path / "o" / "mvtec"
    assert main(build_args(mvtec_src, tmp_path / "o", "--max-shard-bytes", "1MB")) == 0
    manifest = manifest_of(out)
    mutate(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert verify_main([str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err and "manifest.json" in err and "Traceback" not in err


def test_an_unwritable_out_is_one_line(tmp_path, mvtec_src, capsys):
    (tmp_path / "file").write_text("a file where --out needs a folder")
    err = error_of(capsys, build_args(mvtec_src, tmp_path / "file" / "shards"))
    assert str(tmp_path / "file") in err and len(err.strip().splitlines()) == 1


def test_a_second_build_into_the_same_out_names_the_one_holding_it(tmp_path, mvtec_src, capsys):
    """A build that holds OUT/<dataset> (another process) makes a second one stop before touching it."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from shard_tools.lock import build_lock\n"
         f"with build_lock(Path({str(tmp_path / 'o' / 'mvtec')!r})):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=fx.REPO, env={**os.environ, "PYTHONPATH": str(fx.REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        err = error_of(capsys, build_args(mvtec_src, tmp_path / "o"))
        assert f"pid {holder.pid} on " in err and "is being written by another build" in err
        assert not list((tmp_path / "o" / "mvtec").glob("*.tar"))  # the second build wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert main(build_args(mvtec_src, tmp_path / "o")) == 0  # the lock died with its holder


def test_verify_refuses_oversized_members_without_reading_them(tmp_path, mvtec_src, capsys):
    """A json member of 2 MiB (over the 1 MiB cap) is reported, not read; a header declaring 1 TiB
    is a corrupt shard, not a MemoryError."""
    import tarfile

    out = tmp_path / "o" / "mvtec"
    assert main(build_args(mvtec_src, tmp_path / "o", "--max-shard-bytes", "1MB")) == 0
    _rewrite_members(out / "test-000000.tar", out,
                     lambda name, data: data + b" " * (2 << 20) if name.endswith(".json") else data)
    problems = verify_build(out)
    assert problems and all("over the 1048576-byte limit for .json members" in p or "counts" in p for p in problems)
    header = tarfile.TarInfo("mvtec/bottle/test/good/x.png")
    header.size = 1 << 40
    (out / "val-000000.tar").write_bytes(header.tobuf(format=tarfile.GNU_FORMAT) + bytes(1024))
    text = "\n".join(verify_build(out))
    assert "val-000000.tar: not a readable tar" in text and "corrupt or truncated" in text
