"""onnx-pathlift: path-norms of ONNX ReLU networks, computed by a lifted ONNX graph in onnxruntime.

Public API::

    import onnx_pathlift as pl
    pl.path_norm("model.onnx", q=2)        # PathNorm(q=2.0, log10=..., value=...)
    pl.lift("model.onnx", q=1)             # the lifted ONNX model (ModelProto)
    dag = pl.import_model("model.onnx")    # the networkx DAG of layers
    pl.emit_model(dag)                     # re-emitted model with signed weights (for checks)
    pl.path_metric("a.onnx", "b.onnx")     # sandwich bounds on ‖Φ(θ) − Φ(θ')‖_1 (a certificate)
    pl.lipschitz("model.onnx")             # input-space Lipschitz bound ‖Φ_in‖_1
    pl.path_magnitude("model.onnx")        # rescaling-invariant pruning scores
"""

from .dag import Dag, Layer
from .emit import emit_model, lift_model
from .errors import InvalidModelError, PathliftError, UnsupportedModelError, UsageError
from .importer import import_model
from .lipschitz import lipschitz
from .metric import path_metric
from .norm import PathNorm, PathNormSession, lift, path_norm
from .scores import path_magnitude

__version__ = "0.1.0"

__all__ = [
    "Dag", "Layer", "PathNorm", "PathNormSession", "PathliftError", "InvalidModelError", "UnsupportedModelError",
    "UsageError", "emit_model", "import_model", "lift", "lift_model", "lipschitz", "path_magnitude", "path_metric",
    "path_norm", "__version__",
]
