"""Deployment: BatchNorm folding, a fast int8 CPU path (onnxruntime or OpenVINO), ONNX export and the benchmark.

``compile(model)`` turns a converted model into a callable that runs its convolutions and linear layers as int8;
``export_onnx(model, path)`` writes the same graph (or the float one) as a checked ``.onnx`` file. onnxruntime and
onnx come with the ``deploy`` extra (``pip install 'bitnetcnn[deploy]'``) and are imported only when used; OpenVINO
(``pip install openvino``) is an optional second runtime that ``compile(backend="auto")`` uses where it measures
faster (``deployed.backend`` says which ran).
"""

from bitnetcnn.deploy.checks import NotDeployableError, check_deployable
from bitnetcnn.deploy.compile import compile, to_onnx_graph
from bitnetcnn.deploy.export import ExportCheck, export_onnx
from bitnetcnn.deploy.fold import fold_batchnorm
from bitnetcnn.deploy.runtime import DeployedModel

__all__ = [
    "DeployedModel",
    "ExportCheck",
    "NotDeployableError",
    "check_deployable",
    "compile",
    "export_onnx",
    "fold_batchnorm",
    "to_onnx_graph",
]
