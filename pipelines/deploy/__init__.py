"""From a training export to an inspection line: one deployable graph, its runtimes, prediction on images.

    export        ``RUN/export`` -> ONNX / OpenVINO / TorchScript with its info.json (sha256 of every file)
    runtime       exported models run without the training stack (ONNX Runtime, OpenVINO, TorchScript)
    predict       a folder or glob of images -> scores.csv and heatmaps, the stored threshold applied

Imports: ``pipelines.base`` and ``pipelines.training`` (an export's folder is replaced as a checkpoint is).
"""
