"""The shared base of every stage: configuration, errors and exits, the distributed setup, model construction.

    config        one frozen dataclass config tree: YAML, then ``a.b=value`` overrides, unknown keys rejected
    exits         the error path of every entry point: one line or a traceback; a failing rank leaves at once
    checks        config checks run before any process group exists (batch arithmetic, model, loss, run.dir)
    distributed   the Accelerator, synchronised BatchNorm on CPU, collective timeouts, the way out
    collectives   every cross-rank reduction and gather of the runtime
    model         config -> RDCCL (teacher, projector, student), exports read and written
    tracking      the run's scalars, tables and images: W&B (online | offline | disabled) and a JSON-lines log
    visualize     heatmap overlays and metric curves (matplotlib Agg)

Nothing here imports another stage: data, training, evaluation, deploy and experiments build on it.
"""
