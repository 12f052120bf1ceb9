"""One module per op family; importing this package registers every import rule and layer op."""

from . import activation, arithmetic, batchnorm, conv, deconv, dense, fused, plumbing, pool, quantize, reduce, resize, selection, shape, source  # noqa: F401  (registration)
from .capabilities import ANALYSES, require
from .context import ImportContext
from .layer_op import LayerOp
from .registry import IMPORTERS, LAYER_OPS, kind_counts
from .unsupported import reason_for

__all__ = ["ANALYSES", "IMPORTERS", "LAYER_OPS", "ImportContext", "LayerOp", "kind_counts", "reason_for", "require"]
