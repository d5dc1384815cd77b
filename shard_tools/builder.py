"""Build one dataset's shards: scan -> plan -> parallel processing -> shard files -> manifest.

Resume: after every finished shard the journal records it with the range of planned items it covers;
``--resume`` keeps each journaled shard whose file still has its checksum and restarts after the last.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from tqdm import tqdm

from shard_format.manifest import make_manifest, manifest_path
from shard_format.schema import SPLITS, parse_shard_name, shard_name
from shard_format.writer import ShardWriter, closed_size, file_sha256, member_bytes
from shard_tools.errors import UserError, warn
from shard_tools.items import Skip, SourceOptions
from shard_tools.journal import JOURNAL_NAME, read_json, write_json_atomic
from shard_tools.parallel import ordered_map
from shard_tools.plan import Plan, make_plan, plan_digest
from shard_tools.process import Sample, process_batch
from shard_tools.sources import get_source


@dataclass(frozen=True)
class BuildOptions:
    """Everything that decides the output, plus how to get there (workers, resume, strict)."""

    out: Path
    image_size: int | None = None
    max_shard_bytes: int = 256 * 10**6
    val_fraction: float = 0.05
    seed: int = 0
    realiad_resolution: str | None = None
    realiad_jsons: str | None = None
    cocoad_split: int = 0
    strict: bool = False
    workers: int = 1
    resume: bool = False


def recorded_args(root: Path, options: BuildOptions) -> dict:
    """The arguments that shape the output (workers and resume do not), as the manifest records them."""
    args = asdict(options)
    for key in ("out", "workers", "resume"):
        args.pop(key)
    args["root"] = str(root)
    return args


def build_dataset(name: str, root: Path, options: BuildOptions) -> dict:
    """Build ``options.out/name`` from ``root``; return the manifest."""
    scan = get_source(name)(root, SourceOptions(dataset=name, realiad_resolution=options.realiad_resolution,
                                                realiad_jsons=options.realiad_jsons,
                                                cocoad_split=options.cocoad_split))
    if not scan.items:
        raise UserError(f"--root {name}={root}: no usable images found"
                        + (f" ({len(scan.skipped)} skipped, e.g. {scan.skipped[0].source}: "
                           f"{scan.skipped[0].reason})" if scan.skipped else ""))
    plan = make_plan(scan, options.val_fraction, options.seed)
    for skip in plan.skipped:
        _report_skip(skip, options.strict)
    out_dir = options.out / name
    out_dir.mkdir(parents=True, exist_ok=True)
    return _BuildRun(name, root, out_dir, plan, options).run()


def _report_skip(skip: Skip, strict: bool) -> None:
    if strict:
        raise UserError(f"{skip.source}: {skip.reason} (--strict makes this fatal)")
    warn(f"skipped {skip.source}: {skip.reason}")


class _BuildRun:
    """The state of one dataset build (its journal, its progress bar)."""

    def __init__(self, name: str, root: Path, out_dir: Path, plan: Plan, options: BuildOptions) -> None:
        self.name, self.out_dir, self.plan, self.options = name, out_dir, plan, options
        self.args = recorded_args(root, options)
        self.fingerprint = {"args": self.args, "classes": plan.classes,
                            "plan": {s: plan_digest(plan.splits[s]) for s in SPLITS}}
        self.entries: list[dict] = []  # finished shards, in manifest order
        self.tail_skips: list[Skip] = []  # skips after the last finished shard of a split

    def run(self) -> dict:
        kept = self._resumable() if self.options.resume else {}
        self._clean_start(kept)
        todo = sum(len(self.plan.splits[s]) - (kept[s][-1]["end"] if kept.get(s) else 0) for s in SPLITS)
        with tqdm(total=todo, desc=self.name, unit="img", disable=None, dynamic_ncols=True) as bar:
            for split in SPLITS:
                self._write_split(split, kept.get(split, []), bar)
        skipped = [s.to_json() for s in self.plan.skipped + self.tail_skips]
        skipped += [s for e in self.entries for s in e["skipped"]]
        manifest = make_manifest(self.name, self.args, self.plan.classes, self.entries, skipped)
        self._remove_stale({e["name"] for e in self.entries})
        write_json_atomic(manifest_path(self.out_dir), manifest)
        return manifest

    # -- resume ---------------------------------------------------------------------------------------
    def _resumable(self) -> dict[str, list[dict]]:
        """Per split, the leading journaled shards whose files are intact."""
        journal = read_json(self.out_dir / JOURNAL_NAME)
        if not journal:
            return {}
        if journal.get("fingerprint", {}).get("args") != self.args:
            warn(f"{self.out_dir}: the interrupted build used other arguments; rebuilding from scratch")
            return {}
        kept: dict[str, list[dict]] = {}
        for split in SPLITS:
            if journal["fingerprint"].get("plan", {}).get(split) != self.fingerprint["plan"][split] or \
                    journal["fingerprint"].get("classes") != self.plan.classes:
                warn(f"{self.out_dir}: the {split} inputs changed since the interrupted build; rebuilding {split}")
                continue
            kept[split] = []
            for entry in (e for e in journal.get("shards", []) if e["split"] == split):
                path = self.out_dir / entry["name"]
                if not path.is_file() or file_sha256(path) != entry["sha256"]:
                    break
                kept[split].append(entry)
        return kept

    def _clean_start(self, kept: dict[str, list[dict]]) -> None:
        """Remove what a previous build left that is not kept: no stale shard may look complete."""
        names = {e["name"] for entries in kept.values() for e in entries}
        manifest_path(self.out_dir).unlink(missing_ok=True)
        for path in self.out_dir.iterdir():
            if (path.name.startswith(".") and path.name.endswith(".tmp")) or \
                    (parse_shard_name(path.name) and path.name not in names):
                path.unlink()
        self.entries = [e for s in SPLITS for e in kept.get(s, [])]
        self._save_journal()

    def _save_journal(self) -> None:
        write_json_atomic(self.out_dir / JOURNAL_NAME, {"fingerprint": self.fingerprint, "shards": self.entries})

    def _remove_stale(self, names: set[str]) -> None:
        for path in self.out_dir.iterdir():
            if parse_shard_name(path.name) and path.name not in names:
                path.unlink()

    # -- writing --------------------------------------------------------------------------------------
    def _write_split(self, split: str, kept: list[dict], bar: tqdm) -> None:
        items = self.plan.splits[split]
        start = kept[-1]["end"] if kept else 0
        state = _ShardState(split, len(kept), start)
        work = partial(process_batch, image_size=self.options.image_size)
        for pos, result in enumerate(ordered_map(work, items[start:], self.options.workers), start):
            bar.update(1)
            if isinstance(result, Skip):
                _report_skip(result, self.options.strict)
                state.skips.append(result)
                continue
            self._add(state, pos, result)
        if state.writer is not None:
            self._finish_shard(state, len(items))
        self.tail_skips.extend(state.skips)

    def _add(self, state: _ShardState, pos: int, samples: list[Sample]) -> None:
        size = sum(member_bytes([len(d) for _, d in s.members]) for s in samples)
        if state.writer is not None and state.writer.samples and \
                closed_size(state.writer.offset + size) > self.options.max_shard_bytes:
            self._finish_shard(state, pos)
        if state.writer is None:
            state.open(self.out_dir)
        for sample in samples:
            state.writer.add(sample.key, sample.members)
            state.counts[sample.meta.class_name][sample.meta.label] += 1

    def _finish_shard(self, state: _ShardState, end: int) -> None:
        info = state.writer.finish()
        entry = info.to_json() | {"start": state.start, "end": end,
                                  "counts": {c: list(v) for c, v in sorted(state.counts.items())},
                                  "skipped": [s.to_json() for s in state.skips]}
        self.entries.append(entry)
        self.entries.sort(key=lambda e: (SPLITS.index(e["split"]), e["name"]))  # resumed splits interleave
        self._save_journal()
        state.reset(end)


class _ShardState:
    """The shard being filled: its writer, the first planned item it covers, its counts and skips."""

    def __init__(self, split: str, index: int, start: int) -> None:
        self.split, self.index = split, index
        self.writer: ShardWriter | None = None
        self.reset(start)

    def reset(self, start: int) -> None:
        self.writer = None
        self.start = start
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.skips: list[Skip] = []

    def open(self, out_dir: Path) -> None:
        self.writer = ShardWriter(out_dir, shard_name(self.split, self.index), self.split)
        self.index += 1
