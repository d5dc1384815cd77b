"""The runtime, by stage: follow one image from a shard to a score by walking down the tree.

    base          config, exits, checks, the distributed setup and collectives, the model, tracking, plots
    data          classes, labels, the data plan, class-aware batches, the training stream, the exactly-once reader
    training      input checks, the loop, early stopping, monitor, checkpoints and exports
    evaluation    streaming evaluation, saved maps, extremes, the HTML report
    deploy        export, the torch-free runtimes, prediction
    experiments   jobs, strategies, comparisons, sweeps, SLURM, the demo

Imports run one way: base <- data <- training <- evaluation; deploy and experiments sit above what they use
(tests/test_stages.py checks it from the code).
"""
