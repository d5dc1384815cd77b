"""From a training export to an inspection line: one deployable graph, its runtimes, prediction on images.

    export             ``RUN/export`` -> ONNX / OpenVINO / TorchScript with its info.json (sha256 of every file)
    precision          fp32 -> fp16 or INT8 graphs (ONNX Runtime static QDQ, OpenVINO through NNCF)
    calibration        INT8's calibration images: normal training images read from the shards, recorded
    runtime            exported models run without the training stack (ONNX Runtime, OpenVINO, TorchScript)
    evaluate_deployed  an exported graph scored on test shards by the training export's evaluator
    predict            a folder or glob of images -> scores.csv and heatmaps, the stored threshold applied

Imports: ``pipelines.base``, ``pipelines.data`` (calibration images), ``pipelines.evaluation`` (the evaluator)
and ``pipelines.training`` (an export's folder is replaced as a checkpoint is).
"""
