"""An independent float64 path-norm of a torch module: its lifted network, evaluated by torch.fx.

This works on the torch *module*, not on an ONNX file nor on onnx_pathlift's DAG: the module is
traced with ``torch.fx.symbolic_trace`` and its graph interpreted with every module / function
replaced by its lifted form (notes/pathnorm-math.md §2), on an all-ones input of batch 1:

* Conv2d / Linear: weights ``|W|^q``, bias ``|b|^q``;
* BatchNorm2d (eval): ``s = γ/√(var+ε)``, ``t = β − μ·s`` → ``|s|^q·x + |t|^q``; with
  ``fuse_conv_bn=True`` a BatchNorm whose input is a Conv2d used by it alone is folded into that
  conv first (``W·s``, ``b·s + t``), as both torch ONNX exporters do in eval mode;
* ReLU: identity; Hardtanh(a, b) (ReLU6 = Hardtanh(0, 6)) through its one-chain DAG-ReLU form
  ``b − relu((b − a) − relu(x − a))``: ``x + |a|^q + |b − a|^q + |b|^q``;
* MaxPool2d: the sum over each of torch's windows (``ceil_mode`` windows included: those that
  start inside the input or the left padding), as a depthwise all-ones convolution of the
  zero-padded input, cropped to the output size torch computes;
* AvgPool2d / AdaptiveAvgPool2d / mean: each output is ``Σ_window x · (1/div)^q`` with the divisor
  torch itself uses at that position;
* Dropout, Identity: identity; skip add, cat, flatten, view, reshape, transpose, chunk, getitem:
  the same op; constant ``+ c``, ``− c``, ``c − x``: bias ``|c|^q``; ``× c``, ``/ c``: scale ``|c|^q``, ``|1/c|^q``.

The sum of the outputs is ``‖Φ‖_q^q``. To stay exact beyond float64's range every tensor is carried
as ``T · 2^k`` (``T`` float64, ``k`` an integer), renormalised by a power of two (exact) after
every parameterised layer and brought to a common exponent where tensors meet.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import fx, nn
from torch.nn import functional as F

_LOG10_2 = math.log10(2.0)
_CHUNK = 1 << 22  # rows of a big Linear are lifted this many weights at a time


class Scaled:
    """A lifted tensor ``t · 2**k`` (``t`` ≥ 0, float64; ``k`` a Python int)."""

    __slots__ = ("k", "t")

    def __init__(self, t: torch.Tensor, k: int = 0):
        self.t, self.k = t, k

    def normalised(self) -> Scaled:
        top = float(self.t.max()) if self.t.numel() else 0.0
        if top == 0.0 or not math.isfinite(top):
            assert top == 0.0 or self.t.numel() == 0, f"non-finite lifted value {top}"
            return self
        e = math.frexp(top)[1] - 1  # top · 2^-e ∈ [1, 2)
        return Scaled(self.t * math.ldexp(1.0, -e), self.k + e)  # exact: a power of two


def _scaled_const(c: torch.Tensor | float) -> Scaled:
    return Scaled(torch.as_tensor(c, dtype=torch.float64)).normalised()


def _leaves(obj) -> list[Scaled]:
    if isinstance(obj, Scaled):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [s for o in obj for s in _leaves(o)]
    if isinstance(obj, dict):
        return [s for o in obj.values() for s in _leaves(o)]
    return []


def _strip(obj, k: int):
    """Replace every Scaled by its tensor expressed at exponent ``k`` (k ≥ its own)."""
    if isinstance(obj, Scaled):
        return obj.t if obj.k == k else obj.t * math.ldexp(1.0, obj.k - k)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_strip(o, k) for o in obj)
    if isinstance(obj, dict):
        return {n: _strip(o, k) for n, o in obj.items()}
    return obj


def _wrap(obj, k: int):
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return Scaled(obj, k)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_wrap(o, k) for o in obj)
    return obj


def _structural(fn, args, kwargs):
    """A linear op that only moves, copies or adds values (cat, view, add, getitem, ...): applied
    to the tensors brought to their common exponent."""
    leaves = _leaves((args, kwargs))
    k = max(s.k for s in leaves)
    return _wrap(fn(*_strip(args, k), **_strip(kwargs, k)), k)


def _add(x: Scaled, c: torch.Tensor | float) -> Scaled:
    """``x + c`` for a non-negative constant ``c`` (broadcast)."""
    c = _scaled_const(c)
    k = max(x.k, c.k)
    return Scaled(_strip(x, k) + _strip(c, k), k)


def _mul(x: Scaled, c: torch.Tensor | float) -> Scaled:
    c = _scaled_const(c)
    return Scaled(x.t * c.t, x.k + c.k).normalised()


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _pool_size(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling output size (windows starting in the end padding are dropped)."""
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


def _window_sum(t: torch.Tensor, k, s, lead, d, out) -> torch.Tensor:
    """``y[i, j] = Σ t[i·s − lead + a·d, j·s − lead + b·d]`` over the window (zero outside ``t``)."""
    pads = []
    for dim in (1, 0):  # F.pad wants the last dimension first
        right = max(0, (out[dim] - 1) * s[dim] + d[dim] * (k[dim] - 1) + 1 - t.shape[2 + dim] - lead[dim])
        pads += [lead[dim], right]
    t = F.pad(t, pads)
    if tuple(d) == (1, 1):  # a plain sum pool
        y = F.avg_pool2d(t, k, s, divisor_override=1)
    else:  # a depthwise all-ones convolution
        y = F.conv2d(t, torch.ones((t.shape[1], 1, *k), dtype=t.dtype), stride=s, dilation=d, groups=t.shape[1])
    return y[:, :, : out[0], : out[1]]


def _conv2d(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups: int) -> torch.Tensor:
    """F.conv2d without bias; a grouped one as im2col + batched matmul (torch's float64 grouped
    convolution on CPU is many times slower)."""
    if groups == 1:
        return F.conv2d(x, w, None, stride, padding, dilation)
    (n, c, h, wd), (o, _, kh, kw) = x.shape, w.shape
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    oh, ow = ((size + 2 * p[i] - d[i] * ((kh, kw)[i] - 1) - 1) // s[i] + 1 for i, size in enumerate((h, wd)))
    cols = F.unfold(x, (kh, kw), d, p, s).view(n, groups, c // groups * kh * kw, oh * ow)
    y = torch.einsum("gok,ngkl->ngol", w.reshape(groups, o // groups, -1), cols)
    return y.reshape(n, o, oh, ow)


def _max_pool(x: Scaled, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    assert not return_indices
    k, p, d = _pair(kernel_size), _pair(padding), _pair(dilation)
    s = _pair(stride) if stride else k
    out = [_pool_size(x.t.shape[2 + i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(2)]
    assert tuple(F.max_pool2d(x.t, k, s, p, d, ceil_mode).shape[2:]) == tuple(out)
    return Scaled(_window_sum(x.t, k, s, p, d, out), x.k)


def _avg_pool(x: Scaled, q: float, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
              divisor_override=None):
    k, p, one = _pair(kernel_size), _pair(padding), (1, 1)
    s = _pair(stride) if stride else k
    h, w = x.t.shape[2:]
    out = [_pool_size(n, k[i], s[i], p[i], 1, ceil_mode) for i, n in enumerate((h, w))]
    assert tuple(F.avg_pool2d(x.t, k, s, p, ceil_mode, count_include_pad).shape[2:]) == tuple(out)
    total = _window_sum(x.t, k, s, p, one, out)
    if divisor_override:
        div = torch.tensor(float(divisor_override), dtype=torch.float64)
    elif count_include_pad:  # cells of the window inside the padded extent [−p, n + p)
        div = _window_sum(torch.ones((1, 1, h + 2 * p[0], w + 2 * p[1]), dtype=torch.float64), k, s, (0, 0), one, out)
    else:  # cells inside the input
        div = _window_sum(torch.ones((1, 1, h, w), dtype=torch.float64), k, s, p, one, out)
    return _mul(Scaled(total, x.k), div ** -q)


def _adaptive_avg_pool(x: Scaled, q: float, output_size) -> Scaled:
    h, w = x.t.shape[2:]
    oh, ow = (o if o is not None else n for o, n in zip(_pair(output_size), (h, w)))
    y = torch.empty((*x.t.shape[:2], oh, ow), dtype=torch.float64)
    for i in range(oh):
        h0, h1 = i * h // oh, -(-(i + 1) * h // oh)
        for j in range(ow):
            w0, w1 = j * w // ow, -(-(j + 1) * w // ow)
            y[:, :, i, j] = x.t[:, :, h0:h1, w0:w1].sum((2, 3)) * float((h1 - h0) * (w1 - w0)) ** -q
    return Scaled(y, x.k).normalised()


def _mean(x: Scaled, q: float, dim=None, keepdim=False, dtype=None) -> Scaled:
    dims = list(range(x.t.ndim)) if dim is None else [dim] if isinstance(dim, int) else list(dim)
    n = math.prod(x.t.shape[i] for i in dims)
    return _mul(Scaled(x.t.sum(dims, keepdim=keepdim), x.k), float(n) ** -q)


def _hardtanh(x: Scaled, q: float, a: float, b: float) -> Scaled:
    return _add(x, abs(a) ** q + abs(b - a) ** q + abs(b) ** q)


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) of an eval-mode BatchNorm in float64: ``bn(x) = s·x + t`` per channel."""
    assert not bn.training and bn.track_running_stats
    var, mean = bn.running_var.double(), bn.running_mean.double()
    g = bn.weight.double() if bn.affine else torch.ones_like(var)
    beta = bn.bias.double() if bn.affine else torch.zeros_like(var)
    s = g / torch.sqrt(var + bn.eps)
    return s, beta - mean * s


class LiftedInterpreter(fx.Interpreter):
    """Runs a traced module's graph on :class:`Scaled` values with the lifted forms above."""

    def __init__(self, gm: fx.GraphModule, q: float, fuse_conv_bn: bool):
        super().__init__(gm)
        self.q = float(q)
        self.fused: dict[str, nn.BatchNorm2d] = {}  # conv node → the BatchNorm folded into it
        self.folded: set[str] = set()  # BatchNorm nodes folded into their conv
        self.node: fx.Node | None = None
        mods = dict(gm.named_modules())
        for n in gm.graph.nodes:
            if n.op == "call_module" and isinstance(mods[n.target], nn.BatchNorm2d):
                src = n.args[0]
                if (fuse_conv_bn and isinstance(src, fx.Node) and src.op == "call_module"
                        and isinstance(mods[src.target], nn.Conv2d) and len(src.users) == 1):
                    self.fused[src.name] = mods[n.target]
                    self.folded.add(n.name)
        self.n_batchnorm = sum(isinstance(m, nn.BatchNorm2d) for m in mods.values())

    def run_node(self, n: fx.Node):
        self.node = n
        return super().run_node(n)

    # -- parameterised layers -------------------------------------------------------------------

    def _power(self, w: torch.Tensor) -> torch.Tensor:
        """``|w|^q`` in float64."""
        a = w.detach().abs().double()
        return a if self.q == 1.0 else a.pow_(self.q)

    def _conv(self, m: nn.Conv2d, x: Scaled) -> Scaled:
        assert m.padding_mode == "zeros" and not isinstance(m.padding, str)
        w = m.weight.detach().double()
        b = m.bias.detach().double() if m.bias is not None else None
        if self.node.name in self.fused:
            s, t = bn_affine(self.fused[self.node.name])
            w = w * s.view(-1, 1, 1, 1)
            b = t if b is None else b * s + t
        y = Scaled(_conv2d(x.t, self._power(w), m.stride, m.padding, m.dilation, m.groups), x.k).normalised()
        return y if b is None else _add(y, self._power(b).view(-1, 1, 1)).normalised()

    def _linear(self, m: nn.Linear, x: Scaled) -> Scaled:
        w = m.weight.detach()
        rows = max(1, _CHUNK // w.shape[1])
        y = torch.cat([x.t @ self._power(w[i:i + rows]).T for i in range(0, w.shape[0], rows)], -1)
        y = Scaled(y, x.k).normalised()
        return y if m.bias is None else _add(y, self._power(m.bias)).normalised()

    def _batchnorm(self, m: nn.BatchNorm2d, x: Scaled) -> Scaled:
        if self.node.name in self.folded:
            return x
        s, t = bn_affine(m)
        y = _mul(x, (s.abs() ** self.q).view(-1, 1, 1))
        return _add(y, (t.abs() ** self.q).view(-1, 1, 1)).normalised()

    # -- fx hooks ---------------------------------------------------------------------------------

    def call_module(self, target, args, kwargs):
        m, q = self.fetch_attr(target), self.q
        x = args[0]
        if isinstance(m, nn.Conv2d):
            return self._conv(m, x)
        if isinstance(m, nn.Linear):
            return self._linear(m, x)
        if isinstance(m, nn.BatchNorm2d):
            return self._batchnorm(m, x)
        if isinstance(m, (nn.ReLU, nn.Dropout, nn.Identity)):
            return x
        if isinstance(m, nn.Hardtanh):  # ReLU6 included
            return _hardtanh(x, q, m.min_val, m.max_val)
        if isinstance(m, nn.MaxPool2d):
            return _max_pool(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices)
        if isinstance(m, nn.AvgPool2d):
            return _avg_pool(x, q, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                             m.divisor_override)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return _adaptive_avg_pool(x, q, m.output_size)
        if isinstance(m, nn.Flatten):
            return _structural(torch.flatten, (x, m.start_dim, m.end_dim), {})
        raise NotImplementedError(f"no lifted form for module {type(m).__name__} ({target})")

    def call_function(self, target, args, kwargs):
        if not _leaves((args, kwargs)):
            return target(*args, **kwargs)
        q = self.q
        if target in (F.relu, torch.relu, F.dropout):
            return args[0]
        if target is F.relu6:
            return _hardtanh(args[0], q, 0.0, 6.0)
        if target is F.hardtanh:
            a = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
            b = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
            return _hardtanh(args[0], q, a, b)
        if target is F.max_pool2d:
            return _max_pool(*args, **kwargs)
        if target is F.avg_pool2d:
            return _avg_pool(args[0], q, *args[1:], **kwargs)
        if target is F.adaptive_avg_pool2d:
            return _adaptive_avg_pool(args[0], q, *args[1:], **kwargs)
        if target is torch.mean:
            return _mean(args[0], q, *args[1:], **kwargs)
        if target in (operator.add, torch.add, operator.sub, torch.sub, operator.mul, operator.truediv):
            return self._arith(target, args[0], args[1])
        if target is operator.neg:
            return args[0]
        if target in (torch.flatten, torch.cat, torch.concat, torch.transpose, torch.reshape, torch.permute,
                      torch.chunk, torch.split, torch.squeeze, torch.unsqueeze, operator.getitem):
            return _structural(target, args, kwargs)
        raise NotImplementedError(f"no lifted form for function {getattr(target, '__name__', target)}")

    def _arith(self, fn, a, b) -> Scaled:
        if isinstance(a, Scaled) and isinstance(b, Scaled):
            assert fn in (operator.add, torch.add, operator.sub, torch.sub), fn  # a sum of activations
            return _structural(operator.add, (a, b), {})
        x, c = (a, b) if isinstance(a, Scaled) else (b, a)
        c = torch.as_tensor(c, dtype=torch.float64).abs()
        if fn in (operator.mul,):
            return _mul(x, c ** self.q)
        if fn is operator.truediv:
            assert isinstance(a, Scaled), "constant / activation is not piecewise linear"
            return _mul(x, c ** -self.q)
        return _add(x, c ** self.q)  # x ± c, c − x

    def call_method(self, target, args, kwargs):
        x = args[0]
        if not isinstance(x, Scaled):
            return getattr(x, target)(*args[1:], **kwargs)
        if target in ("size", "dim"):
            return getattr(x.t, target)(*args[1:], **kwargs)
        if target in ("relu", "relu_"):
            return x
        if target == "mean":
            return _mean(x, self.q, *args[1:], **kwargs)
        if target in ("view", "reshape", "flatten", "transpose", "permute", "contiguous", "chunk", "split",
                      "squeeze", "unsqueeze"):
            return _structural(lambda t, *a, **kw: getattr(t, target)(*a, **kw), args, kwargs)
        raise NotImplementedError(f"no lifted form for method .{target}()")


def lifted_log2(module: nn.Module, input_shape, q: float, fuse_conv_bn: bool = False) -> tuple[float, int]:
    """``log2 ‖Φ‖_q^q`` of ``module`` (eval mode) for one input of ``input_shape`` (batch 1), and
    the number of BatchNorm layers kept as their own layer (not folded)."""
    assert not module.training, "the path-norm is that of the eval-mode network"
    assert input_shape[0] == 1
    gm = fx.symbolic_trace(module)
    interp = LiftedInterpreter(gm, q, fuse_conv_bn)
    with torch.no_grad():
        out = interp.run(Scaled(torch.ones(tuple(input_shape), dtype=torch.float64)))
    logs = [math.log2(float(s.t.sum())) + s.k for s in _leaves(out) if float(s.t.sum()) > 0]
    top = max(logs)
    total = top + math.log2(math.fsum(2.0 ** (v - top) for v in logs))
    return total, interp.n_batchnorm - len(interp.folded)


def path_norm_log10(module: nn.Module, input_shape, q: float, fuse_conv_bn: bool = False) -> float:
    """``log10 ‖Φ‖_q`` (the q-th root) of ``module`` for one input of ``input_shape``."""
    return lifted_log2(module, input_shape, q, fuse_conv_bn)[0] / q * _LOG10_2
