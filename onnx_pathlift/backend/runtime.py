"""onnxruntime sessions and execution providers, nothing else."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import ModelProto

from ..errors import ProviderUnavailableError, UsageError
from ..graph.builder import BuiltModel

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_THREADS = 0  # onnxruntime's intra-op threads for new sessions (0: its default, one per core)
#: lifted weights from this size on (bytes, all constants together) are not prepacked by onnxruntime
NO_PREPACK_BYTES = 1 << 26


def set_threads(n: int) -> None:
    """Intra-op threads of the sessions made from now on in this process (0: onnxruntime's default).
    Parallel workers (the audit) use 1 each, so that their thread pools do not compete."""
    global _THREADS
    _THREADS = int(n)


def resolve_providers(providers: str | list[str] | None) -> list[str]:
    """``"cpu"``, ``"cuda"`` or onnxruntime provider names → a checked provider list.

    CUDA is never silently replaced by the CPU: if it is not available, this raises.
    """
    if providers is None:
        return [PROVIDERS["cpu"]]
    names = [providers] if isinstance(providers, str) else list(providers)
    resolved = []
    for name in names:
        full = PROVIDERS.get(name.lower(), name)
        if full not in PROVIDERS.values():
            raise UsageError(f"unknown provider {name!r}; choose from {sorted(PROVIDERS)}")
        if full not in ort.get_available_providers():
            raise ProviderUnavailableError(
                f"{full} is not available in this onnxruntime build (available: {ort.get_available_providers()}); "
                "swap in the GPU build on a machine with CUDA: pip uninstall -y onnxruntime && pip install onnxruntime-gpu "
                "(the two install the same module and conflict)"
            )
        resolved.append(full)
    return resolved


#: onnxruntime's graph-rewrite levels by name (see :func:`make_session`)
REWRITES = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def _options(model: ModelProto | BuiltModel, rewrites: str, threads: int | None, profile: str | None) -> ort.SessionOptions:
    """The session options of :func:`make_session`."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: its errors reach us as exceptions, not coloured logs
    if isinstance(model, BuiltModel) and sum(v.nbytes for v in model.external.values()) >= NO_PREPACK_BYTES:
        # our sessions run a handful of times: packing large weight matrices for faster GEMMs costs more
        # than it saves (VGG-11-BN lifted at q = 1, 2: 11 s of session build with it, 4 s without)
        opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.graph_optimization_level = REWRITES[rewrites]
    opts.intra_op_num_threads = _THREADS if threads is None else threads
    if threads is not None:
        opts.inter_op_num_threads = threads
    if profile is not None:
        opts.enable_profiling, opts.profile_file_prefix = True, profile
    return opts


def make_session(model: ModelProto | BuiltModel, providers: str | list[str] | None = None,
                 rewrites: str = "all", threads: int | None = None,
                 profile: str | None = None) -> ort.InferenceSession | FedSession:
    """An inference session on the requested providers, checked to really use the first of them. The
    large constants of a :class:`~onnx_pathlift.graph.builder.BuiltModel` go to onnxruntime as arrays, never
    through protobuf.

    ``threads``: onnxruntime's intra- and inter-op threads for this session (None: the process setting
    of :func:`set_threads`; 1 for latency measurements). ``profile``: a file prefix turns onnxruntime's
    profiler on (``session.end_profiling()`` writes the trace and returns its path).

    ``rewrites``: onnxruntime's graph rewrites, measured by ``benchmarks/bench_session_levels.py``.

    * ``"all"``: for sessions run many times.
    * ``"basic"`` (semantics-preserving rewrites only): for running a source model as its file says
      (the extended ones fuse DequantizeLinear → MatMul/Conv into integer kernels that quantize a
      float activation on the fly, which the file does not do), and for lifted networks run once
      (blocked layouts and fusions cost more to build than they save in one run: lifted ResNet-50 at
      q = 1, 2 0.35 + 0.08 s → 0.05 + 0.06 s).
    * ``"none"``: for the scores graph, whose whole backward pass depends on constants only; basic
      constant folding would run it while building, single-threaded (DenseNet-121 1.00 + 0.37 s →
      0.30 + 0.48 s).

    Below ``"all"``, the large constants are graph inputs fed with every run (:class:`FedSession`):
    onnxruntime copies an initializer while building, a feed it reads in place (lifted ResNet-50 at
    q = 1, 2: session 0.16 → 0.02 s, run 0.10 → 0.13 s, 240 MB less; VGG-11-BN 0.6 → 0.01 s, 1 GB
    less). At ``"all"`` they stay initializers, for the constant-weight kernels of repeated runs."""
    names = resolve_providers(providers)
    opts = _options(model, rewrites, threads, profile)
    constants: dict[str, np.ndarray] = {}
    if isinstance(model, BuiltModel):
        if model.external and rewrites != "all":
            constants, model = model.external, model.fed()
        else:
            if model.external:
                opts.add_external_initializers(list(model.external), [ort.OrtValue.ortvalue_from_numpy(v) for v in model.external.values()])
            model = model.proto
    try:
        data = model.SerializeToString()
    except ValueError as exc:
        raise UsageError(f"model too large to serialize in memory (over 2 GB): {exc}") from exc
    # TF32 would round products to 10-bit mantissas: the error budget (budget.py) assumes float32
    options = [{"use_tf32": "0"} if name == PROVIDERS["cuda"] else {} for name in names]
    session = ort.InferenceSession(data, sess_options=opts, providers=names, provider_options=options)
    if session.get_providers()[0] != names[0]:
        raise ProviderUnavailableError(
            f"onnxruntime fell back to {session.get_providers()[0]} instead of {names[0]} "
            "(CUDA libraries missing or incompatible?)"
        )
    return FedSession(session, constants) if constants else session


class FedSession:
    """An onnxruntime session whose large constants are graph inputs, fed with every run from the
    arrays the model was built with (see :func:`make_session`); every other attribute is the
    session's own."""

    def __init__(self, session: ort.InferenceSession, constants: dict[str, np.ndarray]):
        self._session, self._constants = session, constants

    def run(self, output_names, feeds: dict, run_options=None) -> list:
        return self._session.run(output_names, {**feeds, **self._constants}, run_options)

    def __getattr__(self, name: str):
        return getattr(self._session, name)
