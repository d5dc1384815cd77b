"""The test set of the evaluator: every test sample scored exactly once over ranks and workers.

The test shards are read by the exactly-once reader (``pipelines.data.exact_reader``), cut to the first
``eval.max_images`` samples and filtered to ``eval.classes`` when asked. A sample that does not
decode, and the samples of a shard that is missing or turns out truncated, come out as errors of
the batches that the evaluator reports; it then compares the samples scored with the manifests'
count (``class_test_count``) and fails unless ``eval.allow_partial``.
"""

from __future__ import annotations

from torch.utils.data import DataLoader

from pipelines.data.data_plan import Segment
from pipelines.data.exact_reader import exact_loader, exact_plan
from shard_format.builds import ShardSet
from shard_format.errors import ShardError


def eval_plan(shard_set: ShardSet, ranks: int, workers: int, max_images: int = 0) -> list[list[Segment]]:
    """``plan[rank][worker]``: the contiguous test sample ranges each loader worker reads."""
    return exact_plan(shard_set, "test", ranks, workers, max_images)


def class_test_count(shard_set: ShardSet, classes: tuple[str, ...] = ()) -> int:
    """Test samples of ``classes`` ("dataset/class", all when empty), from the manifests' counts."""
    if not classes:
        return shard_set.count("test")
    unknown = sorted(set(classes) - set(shard_set.class_index))
    if unknown:
        raise ShardError(f"eval.classes {unknown} are not classes of {', '.join(shard_set.builds)} "
                         f"(classes: {', '.join(shard_set.class_names)})")
    total = 0
    for manifest in shard_set.manifests:
        for name, counts in manifest.get("counts", {}).get("test", {}).items():
            if f"{manifest['dataset']}/{name}" in classes:
                total += counts["normal"] + counts["anomalous"]
    return total


def eval_loader(shard_set: ShardSet, image_size: int, batch_size: int, num_workers: int,
                rank: int = 0, world: int = 1, max_images: int = 0, classes: tuple[str, ...] = ()) -> DataLoader:
    """This rank's test loader of ``ExactBatch`` batches (not to be prepared by Accelerate)."""
    return exact_loader(shard_set, "test", image_size, batch_size, num_workers, rank, world, max_images, classes)
