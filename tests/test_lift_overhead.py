"""The static lift's fixed per-layer work, counted, not timed (issue 29): a layer whose lifted form is
``y = x`` (a ReLU, an affine layer whose scale and bias ``_fold_scales`` folded away) takes over its
input's value, bound and ρ without its handler's ``lift``; the exponent-map helpers read per-channel
maps without moving axes; one topological sort fewer per job. Each shortcut against the full path (the
same model bytes and error budgets) and against the float64 brute-force oracle."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from builders import bn_node, bn_params, net
from conftest import MODELS
from onnx import helper
from oracle import brute_force_path_norm

from onnx_pathlift import path_norm
from onnx_pathlift.backend import emit
from onnx_pathlift.frontend.importer import import_model
from onnx_pathlift.graph.builder import SETTLE_LOG2, Scaled
from onnx_pathlift.ir.dag import Dag, Layer
from onnx_pathlift.ops.activation import Relu
from onnx_pathlift.ops.arithmetic import Affine

QS = ((1.0,), (1.0, 2.0), (3.0,))


def _hostile() -> onnx.ModelProto:
    """A ReLU straight on the graph input; a conv whose channel 1 is all zeros (exponent ``-inf``) and a
    ReLU after it; two conv → BN pairs (each BN folded away: a parameter-free affine layer left); a
    residual sum; a ReLU as the analysed output."""
    rng = np.random.default_rng(29)
    wa = rng.normal(size=(3, 2, 2, 2))
    wa[1] = 0.0
    params = {"Wa": wa, "Wb": rng.normal(size=(3, 3, 1, 1)), "Bb": rng.normal(size=3), "Wc": rng.normal(size=(3, 3, 1, 1)),
              **bn_params(rng, "bn1", 3), **bn_params(rng, "bn2", 3)}
    nodes = [helper.make_node("Relu", ["x"], ["r0"]), helper.make_node("Conv", ["r0", "Wa"], ["a"], kernel_shape=[2, 2]),
             helper.make_node("Relu", ["a"], ["r1"]), helper.make_node("Conv", ["r1", "Wb", "Bb"], ["b"], kernel_shape=[1, 1]),
             bn_node("bn1", "b", "bb"), helper.make_node("Relu", ["bb"], ["r2"]), helper.make_node("Add", ["r2", "r1"], ["s"]),
             helper.make_node("Relu", ["s"], ["r3"]), helper.make_node("Conv", ["r3", "Wc"], ["c"], kernel_shape=[1, 1]),
             bn_node("bn2", "c", "cc"), helper.make_node("Relu", ["cc"], ["y"])]
    return net([1, 2, 4, 5], nodes, [1, 3, 3, 4], params)


def _negative_zero() -> onnx.ModelProto:
    """A conv whose channel 0 has only its bias 0.75 left (the BN after it folded in): that channel's bound
    is ``log2 0.75``, its exponent ``ceil`` of it, ``-0.0``; the parameter-free affine layer the BN leaves
    is the analysed output (its full path writes that exponent ``+0.0``)."""
    rng = np.random.default_rng(7)
    wc = rng.normal(size=(3, 3, 1, 1))
    wc[0] = 0.0
    params = {"Wa": rng.normal(size=(3, 2, 2, 2)), "Wc": wc, "bn_gamma": np.ones(3), "bn_beta": np.array([0.75, 1.0, -2.0]),
              "bn_mean": np.zeros(3), "bn_var": np.ones(3)}
    nodes = [helper.make_node("Conv", ["x", "Wa"], ["a"], kernel_shape=[2, 2]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "Wc"], ["c"], kernel_shape=[1, 1]), bn_node("bn", "c", "y")]
    return net([1, 2, 4, 5], nodes, [1, 3, 3, 4], params)


def _models() -> list[Dag]:
    return [import_model(_hostile()), import_model(_negative_zero()), import_model(onnx.load(MODELS / "digits_cnn_torch_bn.onnx"))]


def _bundle(dag: Dag, qs: tuple[float, ...]) -> tuple[bytes, dict, list]:
    model, budgets = emit.lifted_bundle([(dag, q) for q in qs])
    return model.proto.SerializeToString(), {k: v.tobytes() for k, v in model.external.items()}, \
        [(b.ops, b.rho, b.inputs, b.bound_log2) for b in budgets]


def test_identity_layers_call_no_lift(monkeypatch) -> None:
    """Every ReLU and parameter-free affine layer of the lifted network is taken over, not lifted: the
    handlers' ``lift`` runs once per other layer (ReLU's ran for each ReLU before)."""
    calls: Counter = Counter()
    for cls in (Relu, Affine):
        real = cls.lift
        monkeypatch.setattr(cls, "lift", lambda self, b, layer, xs, q, real=real: calls.update([layer.op]) or real(self, b, layer, xs, q))
    for dag in _models()[::2]:  # (the middle one's exponents hold a -0.0: its affine layer takes the full path)
        calls.clear()
        emit.lifted_bundle([(dag, 1.0)])
        layers = emit._fold_scales(dag)
        assert sum(layer.op == "relu" for layer in layers) >= 4 and sum(layer.op == "affine" and not layer.params for layer in layers) >= 2
        assert calls["relu"] == 0
        assert calls["affine"] == sum(layer.op == "affine" and bool(layer.params) for layer in layers)


def test_identity_shortcut_is_the_full_path(monkeypatch) -> None:
    """The lifted models (bytes, external weights) and the error budgets with the shortcut are those of
    the full static path of every layer, at q = 1, (1, 2) and 3."""
    dags = _models()
    fast = [_bundle(dag, qs) for dag in dags for qs in QS]
    for cls in (Relu, Affine):
        monkeypatch.setattr(cls, "lifts_to_identity", lambda self, layer: False)
    assert [_bundle(dag, qs) for dag in dags for qs in QS] == fast


def test_identity_shortcut_against_the_oracle() -> None:
    """The hostile network's norms, certified, contain the float64 brute-force path-norm."""
    model = _hostile()
    dag = import_model(model)
    for q in (1.0, 2.0, 3.0):
        want = brute_force_path_norm(model, q) ** (1 / q)
        got = path_norm(dag, q=q)
        assert got.value == pytest.approx(want, rel=1e-6), q
        assert got.certified and 10**got.lower_log10 <= want * (1 + 1e-12) <= 10**got.upper_log10 * (1 + 1e-12), q


@pytest.mark.parametrize("gap,carried", [(3.0, True), (-SETTLE_LOG2 + 0.5, True), (SETTLE_LOG2 + 1.0, False),
                                         (-SETTLE_LOG2 - 1.0, False)])
def test_identity_shortcut_leaves_settling_to_the_full_path(gap: float, carried: bool) -> None:
    """An input whose exponents are past :data:`SETTLE_LOG2` from its bound (after a clipped settle) is
    not taken over: the full path settles it. Otherwise ρ is ``max(gap, ρ_in)``."""
    layer = Layer(name="r", op="relu", inputs=["x"], shape=(1, 2))
    k = np.array([[gap, 0.0]])
    got = emit._carried(layer, {"x": Scaled("t", k)}, {"x": np.zeros((1, 2))}, {"x": 2.0}, [(1, 2)])
    if not carried:
        assert got is None
        return
    value, bound, rho = got
    assert value.log2 is k and not bound.any() and rho == max(gap, 2.0)


def test_per_channel_maps_move_no_axes(monkeypatch) -> None:
    """The exponent maps of the lifted network are per channel, ``(1, C, 1, 1)``: reading them as
    vectors moves no axis (``np.moveaxis`` ran for every conv's input and target before), and each job
    sorts the DAG at most twice (three times before)."""
    dag = import_model(onnx.load(MODELS / "digits_cnn_torch_bn.onnx"))
    moves, sorts = [], []
    real_move, real_layers = np.moveaxis, Dag.layers
    monkeypatch.setattr(np, "moveaxis", lambda *a, **k: moves.append(1) or real_move(*a, **k))
    monkeypatch.setattr(Dag, "layers", lambda self: sorts.append(1) or real_layers(self))
    emit.lifted_bundle([(dag, 1.0), (dag, 2.0)])
    assert moves == [] and len(sorts) <= 4


def test_attributes_are_built_once_per_value(monkeypatch) -> None:
    """The lifted convs of q = 1 and 2 share their strides, pads, kernel shapes: each distinct attribute
    is built once (``helper.make_attribute``; once per node and attribute before), and every node holds
    the attributes ``make_node`` would give it."""
    dag = import_model(onnx.load(MODELS / "digits_cnn_torch_bn.onnx"))
    built = []
    real = helper.make_attribute
    monkeypatch.setattr(helper, "make_attribute", lambda key, value, *a, **k: built.append(key) or real(key, value, *a, **k))
    model = emit.lifted_bundle([(dag, 1.0), (dag, 2.0)])[0].proto
    held = [a.SerializeToString() for n in model.graph.node for a in n.attribute]
    assert len(held) > len(built) == len(set(held)) > 0
    monkeypatch.setattr(helper, "make_attribute", real)
    for n in model.graph.node:
        again = helper.make_node(n.op_type, n.input, n.output, name=n.name,
                                 **{a.name: helper.get_attribute_value(a) for a in n.attribute})
        assert again.SerializeToString() == n.SerializeToString()


def _maps(rng: np.random.Generator) -> list[np.ndarray]:
    """Exponent maps of shape ``(1, C, 1, 1)``, ``(1, C, H, 1)`` and ``(1, 1, 1, 1)``: integers, some
    entries ``-inf`` (known 0), ``+inf`` or NaN, some constant along an axis, one ``-0.0``."""
    out = []
    for shape in ((1, 5, 1, 1), (1, 3, 4, 1), (1, 1, 1, 1), (1, 5, 1, 1)):
        for special in (None, -np.inf, np.inf, np.nan):
            m = rng.integers(-3, 3, size=shape).astype(np.float64)
            if special is not None:
                m.flat[rng.integers(m.size)] = special
            out += [m, np.broadcast_to(m[:, :, :1], shape).copy(), np.full(shape, -0.0)]
    return out


def test_exponent_shortcuts_match_their_definitions() -> None:
    """``compact``, ``exp_vector``, ``exp_diff`` and ``_gap`` with their shortcuts equal their plain
    definitions (an axis reduced where the map is constant along it; the largest entry per index;
    ``a − b`` or ``-inf``; the least and largest finite ``k − bound``) on maps with ``±inf``, NaN, ``-0.0``."""
    from onnx_pathlift.graph.exponents import compact, exp_diff, exp_vector

    maps = _maps(np.random.default_rng(5))
    for a in maps:
        got = compact(a)
        if np.isfinite(a).all() and a.min() == a.max():
            assert got == int(a.flat[0])
        elif isinstance(got, np.ndarray) and got.ndim == a.ndim:
            assert np.array_equal(np.broadcast_to(got, a.shape), a, equal_nan=True)
            assert all(n == 1 or not np.array_equal(a.take([0], axis=d).repeat(n, axis=d), a) for d, n in enumerate(got.shape))
        if a.shape[1] > 1:  # (one entry along the axis: the largest finite entry, another branch)
            want = np.moveaxis(a, 1, -1).reshape(-1, a.shape[1]).max(axis=0)
            assert np.array_equal(exp_vector(a, a.shape[1], 1), want, equal_nan=True)
        for b in maps[:12]:
            if any(m not in (1, n) and n != 1 for m, n in zip(a.shape, b.shape)):
                continue  # shapes that do not broadcast
            with np.errstate(invalid="ignore"):
                d = np.where(np.isfinite(a) & np.isfinite(b), a - b, -np.inf)
            assert np.array_equal(exp_diff(a, b), d) and np.array_equal(np.signbit(exp_diff(a, b)), np.signbit(d))
            ok = np.isfinite(a) & np.isfinite(b)
            assert emit._gap(a, b) == ((float(d[ok].min()), float(d[ok].max())) if ok.any() else (0.0, 0.0))
