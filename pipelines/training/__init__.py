"""The training loop and what it keeps: inputs checked, the loop, its monitor, checkpoints and exports.

    inputs        a run's inputs checked before any process group works (classes, shards, replay, labels)
    run           ``Run``: everything the loop touches
    optim         Adam with the projector's own learning rate, the schedule
    train         the loop (a table of contents): setup -> fit -> train_epoch -> train_step -> validate
    early_stop    the stopping rule: best weights by raw validation loss, stopping by a smoothed one
    monitor       the loop's scalars, class separation of the global features, t-SNE, heatmaps, debug lines
    sigterm       SIGTERM as a graceful stop request, bounded for a rank that cannot stop
    checkpoint    resumable checkpoints, best/last exports, one launch per run.dir

Imports: ``pipelines.base``, ``pipelines.data``. The test-set evaluation of ``train.eval_every`` is given to
``train`` by the entry point (evaluation is a later stage).
"""
