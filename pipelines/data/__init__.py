"""From shard builds to batches: which classes, which samples each rank and worker reads, in which batches.

    train_classes  which classes a run trains on (class subsets, replay), and the builds opened with the run's cache
    labels         the contrastive class of a training sample (merged class index or pseudo-class sidecar)
    data_plan      the per-epoch plan: contiguous sample ranges per (rank, worker), batches owed
    class_batches  class-aware batches (P classes x K samples) from a stream of labelled samples
    train_data     the training stream: planned ranges -> shuffled samples -> class-aware, augmented batches
    exact_reader   the exactly-once reader: every sample of a split once over ranks x workers (validation, test)
    eval_data      the evaluator's test-set plan and loader, and its per-class counts

Imports: ``pipelines.base`` and ``shard_format`` only.
"""
