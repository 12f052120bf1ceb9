"""Least squares of one layer on collected activations: im2col rows, ridge regression towards the
pruned weights with λ chosen on held-out samples, and its activation-aware variant.

``β(λ) = argmin_β ‖Aβ − Y‖²_F + λ‖D^½(β − β₀)‖²_F = (AᵀA + λD)⁻¹(AᵀY + λDβ₀)``, ``D = diag(AᵀA)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RIDGE_GRID = (1e-8, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
ROW_CAP = 1 << 15  # sampled output positions per conv fit


@dataclass
class _Normal:
    """Normal equations of the fit rows (``G = AᵀA``, ``C = AᵀY``, ``yy = ‖Y‖²``) and of the held-out ones."""

    d: int
    m: int
    g: np.ndarray = field(init=False)
    c: np.ndarray = field(init=False)
    yy: float = 0.0
    g_val: np.ndarray = field(init=False)
    c_val: np.ndarray = field(init=False)
    yy_val: float = 0.0
    rows: int = 0

    def __post_init__(self) -> None:
        self.g, self.g_val = np.zeros((self.d, self.d)), np.zeros((self.d, self.d))
        self.c, self.c_val = np.zeros((self.d, self.m)), np.zeros((self.d, self.m))

    def add(self, a: np.ndarray, y: np.ndarray, held_out: np.ndarray) -> None:
        a, y = a.astype(np.float64), y.astype(np.float64)
        for rows, g, c, field_yy in ((~held_out, self.g, self.c, "yy"), (held_out, self.g_val, self.c_val, "yy_val")):
            ar, yr = a[rows], y[rows]
            g += ar.T @ ar
            c += ar.T @ yr
            setattr(self, field_yy, getattr(self, field_yy) + float(np.sum(yr * yr)))
        self.rows += len(a)

    @staticmethod
    def error(beta: np.ndarray, g: np.ndarray, c: np.ndarray, yy: float) -> float:
        """‖Aβ − Y‖²_F from the normal equations."""
        return float(np.sum(beta * (g @ beta)) - 2.0 * np.sum(beta * c) + yy)


def ridge_solve(g: np.ndarray, c: np.ndarray, beta0: np.ndarray, lam: float) -> np.ndarray:
    """``(G + λD)⁻¹ (C + λDβ₀)`` with ``D = diag(G)`` (floored at 1e-12·max, so D > 0)."""
    diag = np.diag(g).copy()
    diag = np.maximum(diag, 1e-12 * max(float(diag.max(initial=0.0)), 1e-300))
    return np.linalg.solve(g + lam * np.diag(diag), c + lam * diag[:, None] * beta0)


def choose_ridge(ne: _Normal, beta0: np.ndarray) -> tuple[np.ndarray, float | None]:
    """The weights refit on all rows with the λ of :data:`RIDGE_GRID` that does best on the held-out
    rows, or ``β₀`` (λ = None: ∞) when none beats it there."""
    best_err, best_lam = ne.error(beta0, ne.g_val, ne.c_val, ne.yy_val), None
    for lam in RIDGE_GRID:
        try:
            err = ne.error(ridge_solve(ne.g, ne.c, beta0, lam), ne.g_val, ne.c_val, ne.yy_val)
        except np.linalg.LinAlgError:
            continue
        if err < best_err:
            best_err, best_lam = err, lam
    if best_lam is None:
        return beta0, None
    return ridge_solve(ne.g + ne.g_val, ne.c + ne.c_val, beta0, best_lam), best_lam


def held_out(samples: np.ndarray, n: int) -> np.ndarray:
    """Rows of every fifth sample are held out (the last sample when there are fewer than 5)."""
    return samples % 5 == 4 if n >= 5 else samples == n - 1


def _conv_pads(attrs: dict[str, Any], x_shape, y_shape, kernel, strides, dilations) -> list[int]:
    """Explicit begin/end pads of a 2-D conv (``auto_pad`` resolved from the shapes)."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((o - 1) * s + (k - 1) * d + 1 - i, 0)
                 for i, o, k, s, d in zip(x_shape[2:], y_shape[2:], kernel, strides, dilations)]
        lo = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
        return lo + [t - b for t, b in zip(total, lo)]
    return list(attrs.get("pads", [0] * 4)) if auto != "VALID" else [0] * 4


def conv_rows(x: np.ndarray, y: np.ndarray, attrs: dict[str, Any], kernel: tuple[int, int], cap: int = ROW_CAP,
              seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """im2col of a 2-D conv (one group's input and output channels): ``(A, Y, held_out)`` chunks, ``A = [patch, 1]`` (patch in the
    weight's ``(C, kh, kw)`` order), at most ``cap`` output positions sampled uniformly."""
    n, _, ho, wo = y.shape
    strides, dilations = list(attrs.get("strides", [1, 1])), list(attrs.get("dilations", [1, 1]))
    pads = _conv_pads(attrs, x.shape, y.shape, kernel, strides, dilations)
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    total = n * ho * wo
    rows = np.arange(total) if total <= cap else np.sort(np.random.default_rng(seed).choice(total, cap, replace=False))
    channel = np.arange(x.shape[1])[None, :, None, None]
    for start in range(0, len(rows), 4096):
        s, i, j = np.unravel_index(rows[start:start + 4096], (n, ho, wo))
        ii = (i[:, None] * strides[0] + np.arange(kernel[0]) * dilations[0])[:, None, :, None]
        jj = (j[:, None] * strides[1] + np.arange(kernel[1]) * dilations[1])[:, None, None, :]
        patch = xp[s[:, None, None, None], channel, ii, jj].reshape(len(s), -1)
        yield np.hstack([patch, np.ones((len(s), 1), patch.dtype)]), y[s, :, i, j], held_out(s, n)


def dense_rows(x: np.ndarray, y: np.ndarray, intercept: bool) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows of a dense layer (every leading index a row; the sample is axis 0)."""
    n = x.shape[0]
    samples = np.repeat(np.arange(n), x.size // (n * x.shape[-1]))
    a, t = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    for start in range(0, len(a), 8192):
        part = a[start:start + 8192]
        if intercept:
            part = np.hstack([part, np.ones((len(part), 1), part.dtype)])
        yield part, t[start:start + 8192], held_out(samples[start:start + 8192], n)


@dataclass
class Fit:
    """One least-squares fit: the weights, the λ chosen (None: ∞, the pruned weights kept), the
    squared errors ``‖Aβ₀ − Y‖²`` and ``‖Aβ − Y‖²`` and ``‖Y‖²`` over all rows, and the row count."""

    beta: np.ndarray
    ridge: float | None
    err0: float
    err1: float
    yy: float
    rows: int


def fit(rows: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]], beta0: np.ndarray,
        active: tuple[float, float] | None = None) -> Fit:
    """Accumulate the rows ``(A, Y, held_out)``, choose λ (:func:`choose_ridge`) and refit. With the
    ``active`` range ``(lo, hi)`` of the activation σ reading the layer, ``Y`` holds ``[T, O]``
    (target and offset) and the loss is ``‖σ(Aβ + O) − σ(T + O)‖²`` (:func:`activation_aware`)."""
    if active is not None:
        return activation_aware(list(rows), beta0, active)
    ne = _Normal(*beta0.shape)
    for a, y, val in rows:
        ne.add(a, y, val)
    beta, lam = choose_ridge(ne, beta0)
    g, c, yy = ne.g + ne.g_val, ne.c + ne.c_val, ne.yy + ne.yy_val
    return Fit(beta, lam, max(ne.error(beta0, g, c, yy), 0.0), max(ne.error(beta, g, c, yy), 0.0), yy, ne.rows)


ACTIVE_STEPS = 4  # re-targeting steps of an activation-aware fit


def activation_aware(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], beta0: np.ndarray,
                     active: tuple[float, float]) -> Fit:
    """Least squares on what the activation passes on: the linear fit (λ chosen as in :func:`fit`),
    then steps that re-target the entries where both the original and the prediction lie beyond
    the same end of ``(lo, hi)`` to the prediction itself (the activation hides their difference)
    and refit; of ``β₀``, the linear fit and the steps, the one with the least held-out error
    ``‖σ(Aβ + O) − σ(T + O)‖²`` is kept (the errors reported are this loss)."""
    lo, hi = active
    a = np.vstack([r[0] for r in rows]).astype(np.float64)
    m = beta0.shape[1]
    both = np.vstack([r[1] for r in rows]).astype(np.float64)
    t, o, val = both[:, :m], both[:, m:], np.concatenate([r[2] for r in rows])
    ne = _Normal(*beta0.shape)
    ne.add(a, t, val)
    beta, lam = choose_ridge(ne, beta0)
    goal = np.clip(t + o, lo, hi)

    def loss(b: np.ndarray, rows_mask: np.ndarray | slice = slice(None)) -> float:
        return float(np.sum((np.clip(a[rows_mask] @ b + o[rows_mask], lo, hi) - goal[rows_mask]) ** 2))

    candidates = [beta0, beta]
    if lam is not None:
        g = ne.g + ne.g_val
        for _ in range(ACTIVE_STEPS):
            p, y = a @ candidates[-1] + o, t + o
            hidden = ((y <= lo) & (p <= lo)) | ((y >= hi) & (p >= hi))
            candidates.append(ridge_solve(g, a.T @ (np.where(hidden, p, y) - o), beta0, lam))
    best = min(candidates, key=lambda b: loss(b, val))
    return Fit(best, lam if best is not beta0 else None, loss(beta0), loss(best), float(np.sum(goal ** 2)), len(a))
