"""The layout ops' numpy fold rules (``ops/shape.py``: Unsqueeze, Squeeze, Reshape, Flatten, Identity,
Transpose, Cast) against independent oracles on generated cases, valid and not, in opsets 9 to 21:
ONNX's reference evaluator (``frontend.fold._eval_node``, what folded them before): the same bytes,
dtype and shape wherever a rule answers, and no answer (the rule declines: the reference evaluator then
decides) wherever it refuses; onnxruntime where the reference evaluator departs from the ONNX spec
(Squeeze and Unsqueeze before opset 13 with several axes: it takes them one at a time)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
from builders import ints, make_model
from onnx import AttributeProto, NodeProto, TensorProto, helper

from onnx_pathlift.errors import InvalidModelError
from onnx_pathlift.fileio.read import Limits
from onnx_pathlift.frontend.fold import _eval_node, fold
from onnx_pathlift.ops.registry import FOLDS

OPSETS = (9, 11, 13, 14, 21)
DTYPES = (np.float32, np.float64, np.float16, np.int64, np.int32, np.int8, np.uint8, np.uint16, np.uint64, np.bool_)
#: float values that tell conversions apart: NaN, signed zero, infinities, float16's overflow and
#: underflow, integer overflow, halves
SPECIALS = (np.nan, -0.0, np.inf, -np.inf, 65504.0, 70000.0, 1e-8, 3e38, -1e20, 2.5, -3.5, 255.7, -129.2, 4e9)
CAST_TO = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.INT32,
           TensorProto.INT8, TensorProto.UINT8, TensorProto.UINT64, TensorProto.BOOL, TensorProto.STRING,
           TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN)
CASES = 40  # per op and opset


def _data(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Random values of ``dtype`` (an array, 0-d too), floats salted with :data:`SPECIALS`."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        values = np.asarray(rng.normal(0, 100, shape))
        salt = np.asarray(rng.random(shape) < 0.3)
        values[salt] = rng.choice(SPECIALS, int(salt.sum()))
        with np.errstate(over="ignore"):
            return values.astype(dtype)
    if dtype.kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    info = np.iinfo(dtype)
    return np.asarray(rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True))


def _shape(rng: np.random.Generator) -> tuple[int, ...]:
    """Rank 0 to 4, dimensions 1 to 3 (now and then 0)."""
    return tuple(int(d) for d in rng.choice([0, 1, 1, 2, 3] if rng.random() < 0.1 else [1, 1, 2, 3], rng.integers(0, 5)))


def _axes_node(op: str, opset: int, axes: list[int] | None, dtype=np.int64) -> tuple[NodeProto, list]:
    """Squeeze/Unsqueeze in the opset's form: ``axes`` an attribute before 13, an input from 13."""
    if axes is None:
        return helper.make_node(op, ["x"], ["y"]), []
    if opset < 13:
        return helper.make_node(op, ["x"], ["y"], axes=axes), []
    return helper.make_node(op, ["x", "axes"], ["y"]), [np.array(axes, dtype=dtype)]


def _unsqueeze(rng, opset, shape):
    out = len(shape) + int(rng.integers(1, 4))
    return _axes_node("Unsqueeze", opset, [int(a) for a in rng.integers(-out - 1, out + 1, out - len(shape))])


def _squeeze(rng, opset, shape):
    if rng.random() < 0.2:
        return _axes_node("Squeeze", opset, None)
    ones = [i for i, d in enumerate(shape) if d == 1]
    if ones and rng.random() < 0.6:  # valid axes, some negative, in any order
        axes = [int(a) - (len(shape) if rng.random() < 0.4 else 0) for a in rng.permutation(ones)[: rng.integers(1, len(ones) + 1)]]
    else:
        axes = [int(a) for a in rng.integers(-len(shape) - 1, len(shape) + 1, rng.integers(1, 3))]
    return _axes_node("Squeeze", opset, axes)


def _reshape(rng, opset, shape):
    """A target that fits (a factorisation of the size, with a 0 copying a dimension and one -1), or one
    of random small entries; ``allowzero`` from opset 14."""
    size = int(np.prod(shape))
    if rng.random() < 0.6 and size:
        dims, left = [], size
        for p in rng.permutation([2, 3, 2, 1]):
            if left % p == 0 and rng.random() < 0.6:
                dims.append(int(p))
                left //= int(p)
        dims.append(left)
        dims = [int(d) for d in rng.permutation(dims)]
        dims = [0 if i < len(shape) and d == shape[i] and rng.random() < 0.5 else d for i, d in enumerate(dims)]
        if rng.random() < 0.5:
            dims[int(rng.integers(len(dims)))] = -1
    else:
        dims = [int(d) for d in rng.choice([-2, -1, -1, 0, 1, 2, 3, 6], rng.integers(0, 5))]
    attrs = {"allowzero": int(rng.integers(0, 2))} if opset >= 14 and rng.random() < 0.6 else {}
    target = np.array(dims, dtype=np.int64 if rng.random() < 0.9 else np.int32)
    return helper.make_node("Reshape", ["x", "shape"], ["y"], **attrs), [target]


def _flatten(rng, opset, shape):
    if rng.random() < 0.2:
        return helper.make_node("Flatten", ["x"], ["y"]), []
    return helper.make_node("Flatten", ["x"], ["y"], axis=int(rng.integers(-len(shape) - 1, len(shape) + 2))), []


def _transpose(rng, opset, shape):
    r = rng.random()
    if r < 0.2:
        return helper.make_node("Transpose", ["x"], ["y"]), []
    perm = [int(p) for p in rng.permutation(len(shape))]
    if r > 0.8:  # not a permutation: a repeat, an axis too many or too few, a negative axis
        perm = [int(p) for p in rng.integers(-1, len(shape) + 1, max(0, len(shape) + int(rng.integers(-1, 2))))]
    node = helper.make_node("Transpose", ["x"], ["y"])
    node.attribute.append(helper.make_attribute("perm", perm, attr_type=AttributeProto.INTS))  # empty too
    return node, []


def _cast(rng, opset, shape):
    return helper.make_node("Cast", ["x"], ["y"], to=int(rng.choice(CAST_TO))), []


def _identity(rng, opset, shape):
    return helper.make_node("Identity", ["x"], ["y"]), []


MAKERS = {"Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Reshape": _reshape, "Flatten": _flatten,
          "Transpose": _transpose, "Cast": _cast, "Identity": _identity}


def _reference(node: NodeProto, args: list, opset: int) -> np.ndarray | None:
    """ONNX's reference evaluator's output (None: it refuses)."""
    try:
        with np.errstate(all="ignore"):
            return _eval_node(node, args, [helper.make_opsetid("", opset)])[0]
    except Exception:
        return None


def _runtime(node: NodeProto, args: list, opset: int) -> np.ndarray | None:
    """onnxruntime's output on the node alone, ``x`` fed (None: it refuses the model)."""
    x = args[0]
    model = make_model([node], [("x", list(x.shape), helper.np_dtype_to_tensor_dtype(x.dtype))], [("y", None)], opset=opset)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # its refusals are expected here
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]
    except Exception:
        return None


def _departs(node: NodeProto, opset: int) -> bool:
    """Where the reference evaluator departs from the spec: Squeeze/Unsqueeze before opset 13, axes one
    at a time (as given for Unsqueeze, reversed for Squeeze), which differs for several unsorted or
    negative axes."""
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), [])
    return opset < 13 and node.op_type in ("Squeeze", "Unsqueeze") and len(axes) > 1


def _same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Bit-identical: dtype, shape and bytes (NaN payloads and signed zeros included)."""
    assert got.dtype == want.dtype and got.shape == want.shape, f"{what}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), f"{what}: values differ"


def _check(node: NodeProto, args: list, opset: int, seen: Counter) -> None:
    """The rule against the oracle (onnxruntime where the reference evaluator departs from the spec, else
    the reference evaluator): the same bits where the rule answers, a decline where the oracle refuses."""
    want = (_runtime if _departs(node, opset) else _reference)(node, args, opset)
    with np.errstate(all="ignore"):
        got = FOLDS[node.op_type][0](node, args, {}, opset)
    what = f"opset {opset} x {args[0].dtype}{args[0].shape} {helper.printable_node(node)} {[a.tolist() for a in args[1:]]}"
    seen["refused" if want is None else "answered"] += 1
    seen["declined" if got is None else "folded"] += 1
    if got is not None:
        assert want is not None, f"{what}: the rule folds what the oracle refuses"
        _same(got[0], want, what)


@pytest.mark.parametrize("op", sorted(MAKERS))
def test_rule_is_the_oracle_or_declines(op: str) -> None:
    """Many generated cases per opset: where the rule answers, its output is the oracle's bit for bit;
    where the oracle refuses, the rule declines. The rule answers most cases (it is no blanket decline),
    and the cases hold refusals where the op can refuse (they test the declines)."""
    rng = np.random.default_rng(sum(map(ord, op)))
    assert not FOLDS[op][1]  # asked on constant inputs only
    seen: Counter = Counter()
    for opset in OPSETS:
        for _ in range(CASES):
            shape = _shape(rng)
            node, extra = MAKERS[op](rng, opset, shape)
            dtype = np.float32 if _departs(node, opset) else DTYPES[int(rng.integers(len(DTYPES)))]
            _check(node, [_data(rng, shape, dtype), *extra], opset, seen)
    assert seen["folded"] >= 0.4 * len(OPSETS) * CASES, seen
    if op not in ("Identity", "Cast"):
        assert seen["refused"] > 0, seen


#: ``(node, x's shape, other inputs, opset, whether the rule folds it)``: the edges the generator seldom
#: reaches: empty tensors with 0 and -1, a 0 past the input's rank, repeated axes, invalid permutations
EDGES = [
    (helper.make_node("Reshape", ["x", "s"], ["y"]), (0, 3), [ints(0, -1)], 13, False),
    (helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1), (2, 0), [ints(-1, 0)], 14, False),
    (helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1), (0, 3), [ints(0, 3)], 14, True),
    (helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1), (2, 3), [ints(0, 6)], 21, False),
    (helper.make_node("Reshape", ["x", "s"], ["y"]), (2, 3, 0), [ints(0, 0, 0)], 14, True),
    (helper.make_node("Reshape", ["x", "s"], ["y"]), (2, 3), [ints(0, 0, -1)], 13, True),
    (helper.make_node("Reshape", ["x", "s"], ["y"]), (2, 3), [ints(0, 0, 0)], 13, False),
    (helper.make_node("Reshape", ["x", "s"], ["y"]), (2, 3), [ints(-1, -1)], 13, False),
    (helper.make_node("Reshape", ["x", "s"], ["y"]), (2, 3), [ints()], 13, False),
    (helper.make_node("Reshape", ["x", "s"], ["y"]), (1,), [ints()], 13, True),
    (helper.make_node("Flatten", ["x"], ["y"], axis=0), (2, 3), [], 9, True),
    (helper.make_node("Flatten", ["x"], ["y"], axis=-2), (2, 3, 4), [], 11, True),
    (helper.make_node("Flatten", ["x"], ["y"], axis=3), (2, 3, 4), [], 13, True),
    (helper.make_node("Squeeze", ["x", "a"], ["y"]), (1, 3, 1), [ints(0, 0)], 13, False),
    (helper.make_node("Squeeze", ["x", "a"], ["y"]), (1, 3, 1), [ints(-1, 0)], 21, True),
    (helper.make_node("Squeeze", ["x"], ["y"]), (1, 1), [], 13, True),
    (helper.make_node("Unsqueeze", ["x", "a"], ["y"]), (3,), [ints(0, 0)], 13, False),
    (helper.make_node("Unsqueeze", ["x", "a"], ["y"]), (), [ints(-1, 0)], 13, True),
    (helper.make_node("Unsqueeze", ["x"], ["y"], axes=[-1]), (3,), [], 9, False),  # negative before 11: not spec
    (helper.make_node("Transpose", ["x"], ["y"], perm=[0, 0]), (2, 2), [], 13, False),
    (helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING), (2,), [], 13, False),
]


@pytest.mark.parametrize("node, shape, extra, opset, folds", EDGES)
def test_edges(node: NodeProto, shape: tuple[int, ...], extra: list, opset: int, folds: bool) -> None:
    """Each edge against the oracle, and whether the rule folds it (else it declines)."""
    seen: Counter = Counter()
    _check(node, [_data(np.random.default_rng(0), shape, np.float32), *extra], opset, seen)
    assert seen["folded" if folds else "declined"] == 1


def test_departures_from_the_reference_evaluator() -> None:
    """Before opset 13 the reference evaluator takes Unsqueeze's axes one at a time in the given order and
    Squeeze's in reverse: the rules follow the spec (ONNX shape inference and onnxruntime agree) where it
    gives another shape or refuses."""
    x3, x131 = np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(3, dtype=np.float32).reshape(1, 3, 1)
    for op, axes, x, shape in (("Unsqueeze", [-2, -1], x3, (3, 4, 1, 1)), ("Unsqueeze", [2, 0], x3, (1, 3, 1, 4)),
                               ("Squeeze", [2, 0], x131, (3,))):
        node, _ = _axes_node(op, 11, axes)
        reference = _reference(node, [x], 11)
        assert reference is None or reference.shape != shape  # what the reference evaluator does
        got = FOLDS[op][0](node, [x], {}, 11)
        _same(got[0], _runtime(node, [x], 11), op)
        assert got[0].shape == shape


def _fold_one(node: NodeProto, consts: dict, opset: int) -> tuple[Counter, Counter]:
    """Fold ``node`` alone: the op types folded, and those the reference evaluator computed."""
    folded, evaluated = Counter(), Counter()
    fold([helper.make_opsetid("", opset)], opset, [node], consts, {}, Limits(), folded, evaluated)
    return folded, evaluated


def test_a_declined_fold_goes_to_the_reference_evaluator() -> None:
    """A rule's None hands the node to the reference evaluator: its value where it folds (int32 axes,
    which the rule does not read), its own error word for word where it refuses (a target shape that
    does not fit), each counted in ``evaluated``; a rule that answers is not counted there."""
    consts = {"x": np.arange(6, dtype=np.float32), "a32": np.array([0], np.int32), "a64": np.array([0], np.int64),
              "bad": np.array([4, -1], np.int64)}
    assert _fold_one(helper.make_node("Unsqueeze", ["x", "a32"], ["y32"]), consts, 13) == (Counter(Unsqueeze=1),) * 2
    assert _fold_one(helper.make_node("Unsqueeze", ["x", "a64"], ["y64"]), consts, 13) == (Counter(Unsqueeze=1), Counter())
    _same(consts["y32"], consts["y64"], "int32 axes")
    assert consts["y64"].shape == (1, 6)
    with pytest.raises(InvalidModelError) as err:
        _fold_one(helper.make_node("Reshape", ["x", "bad"], ["z"], name="r"), consts, 13)
    with pytest.raises(ValueError) as direct:
        np.reshape(consts["x"], [4, -1])
    assert str(err.value) == f"node 'r' (Reshape): cannot evaluate its constant inputs: ValueError: {direct.value}"


def test_strings_and_other_element_types_are_left_to_the_reference_evaluator() -> None:
    """Tensors of strings and of bfloat16 are not read by the layout rules: they decline, and the
    reference evaluator folds them as before."""
    words = np.array([["a", "b"], ["c", "d"]], dtype=object)
    for op, extra in (("Identity", []), ("Transpose", []), ("Flatten", []), ("Reshape", [np.array([4], np.int64)])):
        node = helper.make_node(op, ["x", "s"][: 1 + len(extra)], ["y"])
        assert FOLDS[op][0](node, [words, *extra], {}, 21) is None
        consts = {"x": words, **({"s": extra[0]} if extra else {})}
        assert _fold_one(node, consts, 21)[1] == Counter({op: 1})
    cast = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16)
    assert FOLDS["Cast"][0](cast, [np.ones(3, np.float32)], {}, 21) is None


def test_constant_of_shape_fills_as_the_oracle_with_its_fill_read_once_per_value() -> None:
    """``ConstantOfShape`` folded in numpy, each fill value read once (``ops/plumbing.py``'s cache): every
    fill the oracle's bits, its dtype included (NaN, -0.0 and 0.0, 0.02 as float32 and float64, float16, int64,
    bool, a value tensor too large to keep, none at all), each read once in two opsets."""
    from onnx import numpy_helper

    from onnx_pathlift.ops import plumbing

    values = [np.float32(0.02), np.float32(-0.0), np.float32(0.0), np.float64(0.02), np.float16(np.nan), np.int64(-7),
              np.bool_(True), np.float32(0.02), np.float32(1.5), None]
    plumbing._fill.cache_clear()
    for opset in (9, 21):
        for k, value in enumerate(values):
            name = "v" * (300 if k == len(values) - 2 else 1)  # the last value's tensor serialises to over 256 bytes
            attrs = {} if value is None else {"value": numpy_helper.from_array(np.atleast_1d(np.asarray(value)), name)}
            node = helper.make_node("ConstantOfShape", ["s"], ["y"], **attrs)
            seen: Counter = Counter()
            _check(node, [ints(2, 0, 3) if k == 6 else ints(2, 3)], opset, seen)
            assert seen["folded"] == 1
    assert plumbing._fill.cache_info().currsize == 7  # the seven small value tensors, each read once
