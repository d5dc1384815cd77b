"""Experiments on top of the stages: jobs through the real command lines, comparisons, sweeps, SLURM, the demo.

    jobs          one train-then-evaluate job through ``launch/`` (accelerate launch, resumable)
    strategies    the strategies of the paper's Fig. 1a: one-for-one, sequential, continual, as real trainings
    compare       seeds x models x budgets on any builds, paired differences, resumable
    sweep         a paper table's rows trained and evaluated, its Markdown table written
    slurm         one node's share of a SLURM job: the ``accelerate launch`` command from SLURM's environment
    demo          ``make demo``: the main job end to end on the embedded demo data, offline

Imports: any stage below; nothing imports this package but ``launch/`` and ``bench/``.
"""
