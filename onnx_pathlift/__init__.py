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

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> module that defines it; loaded on first use (PEP 562), so that ``import
#: onnx_pathlift`` (and the audit's parent process) does not pay for onnx, onnxruntime and networkx
_EXPORTS = {
    "Dag": "ir.dag", "Layer": "ir.dag", "emit_model": "backend.emit", "lift_model": "backend.emit",
    "InvalidModelError": "errors", "PathliftError": "errors", "UnsupportedModelError": "errors",
    "UsageError": "errors", "import_model": "frontend.importer", "lipschitz": "analyses.lipschitz",
    "path_metric": "analyses.metric", "PathNorm": "backend.norm", "PathNormSession": "backend.norm",
    "lift": "backend.norm", "path_norm": "backend.norm", "path_magnitude": "analyses.scores",
}

__all__ = [
    "Dag", "InvalidModelError", "Layer", "PathNorm", "PathNormSession", "PathliftError", "UnsupportedModelError",
    "UsageError", "__version__", "emit_model", "import_model", "lift", "lift_model", "lipschitz", "path_magnitude",
    "path_metric", "path_norm",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'onnx_pathlift' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .analyses.lipschitz import lipschitz
    from .analyses.metric import path_metric
    from .analyses.scores import path_magnitude
    from .backend.emit import emit_model, lift_model
    from .backend.norm import PathNorm, PathNormSession, lift, path_norm
    from .errors import InvalidModelError, PathliftError, UnsupportedModelError, UsageError
    from .frontend.importer import import_model
    from .ir.dag import Dag, Layer
