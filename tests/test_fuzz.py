"""Fuzzing the importer and the CLI with mutated valid models (hypothesis).

Seeds: small valid models (``tiny_nets``, one with shape arithmetic, a ``Constant`` node, quantized
weights and a softmax head, one with Pad, PRelu, Clip and LeakyRelu). Mutations: byte-level (bit flips, truncations, splices,
insertions, deletions of the serialized model) and structure-aware (random attribute values, dims,
dtypes, dropped/duplicated/renamed inputs, op_type swaps, removed/duplicated nodes, opset and
initializer changes). The property: only :class:`~onnx_pathlift.errors.PathliftError` subclasses
escape ``import_model`` + ``path_norm``, and the CLI exits 0, 2, 3 or 4 with one JSON document,
never 1 (internal error). ``FUZZ_EXAMPLES=20000`` runs the long campaign of docs/fuzzing.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny_nets
from builders import make_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from onnx_pathlift import cli, import_model, path_norm
from onnx_pathlift.errors import PathliftError

#: examples of the API property; the CLI property gets a tenth. In CI a fixed (derandomized) set that
#: runs in well under a minute; FUZZ_EXAMPLES=N draws N fresh random examples (docs/fuzzing.md)
LONG = int(os.environ.get("FUZZ_EXAMPLES", "0"))
FUZZ_SETTINGS = settings(
    max_examples=LONG or 3000, deadline=None, derandomize=not LONG, database=settings().database if LONG else None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CLI_SETTINGS = settings(FUZZ_SETTINGS, max_examples=max(FUZZ_SETTINGS.max_examples // 10, 1))


# --------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------


def shape_arith_net() -> onnx.ModelProto:
    """Conv with DequantizeLinear weights -> Relu -> Reshape to Shape-computed dims -> Transpose ->
    Unsqueeze/Squeeze -> MatMul -> Add (Constant bias) -> Dropout -> Softmax (cut as a head)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 127, (3, 2, 3, 3)).astype(np.int8), "Wq"),
        numpy_helper.from_array(np.array(0.02, np.float32), "Ws"),
        numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        numpy_helper.from_array(np.array([0], np.int64), "ax0"),
        numpy_helper.from_array(rng.normal(size=(48, 5)).astype(np.float32), "M"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["Wq", "Ws"], ["W"], name="dq"),
        helper.make_node("Conv", ["x", "W", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["batch"], name="gather", axis=0),
        helper.make_node("Concat", ["batch", "minus1"], ["newshape"], name="concat", axis=0),
        helper.make_node("Transpose", ["r"], ["t"], name="transpose", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "newshape"], ["flat"], name="reshape"),
        helper.make_node("Unsqueeze", ["flat", "ax0"], ["u"], name="unsqueeze"),
        helper.make_node("Squeeze", ["u", "ax0"], ["sq"], name="squeeze"),
        helper.make_node("MatMul", ["sq", "M"], ["mm"], name="matmul"),
        helper.make_node("Constant", [], ["cb"], name="const_bias",
                         value=numpy_helper.from_array(rng.normal(size=5).astype(np.float32))),
        helper.make_node("Add", ["mm", "cb"], ["logits"], name="add"),
        helper.make_node("Dropout", ["logits"], ["d"], name="dropout"),
        helper.make_node("Softmax", ["d"], ["y"], name="softmax", axis=-1),
    ]
    model = make_model(nodes, [("x", [1, 2, 8, 8])], [("y", [1, 5])], inits, name="shape_arith")
    model.ir_version = 8
    return model


def piecewise_net() -> onnx.ModelProto:
    """Pad -> Conv -> PRelu -> Clip (ReLU6) -> LeakyRelu -> MaxPool -> Flatten -> Gemm."""
    rng = np.random.default_rng(1)
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "W": rng.normal(size=(3, 2, 3, 3)),
             "slope": rng.uniform(0, 0.3, (3, 1, 1)), "lo": np.array(0.0), "hi": np.array(6.0),
             "Wf": rng.normal(size=(4, 27)), "bf": rng.normal(size=4)}
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
        helper.make_node("Conv", ["p", "W"], ["c"], name="conv"),
        helper.make_node("PRelu", ["c", "slope"], ["pr"], name="prelu"),
        helper.make_node("Clip", ["pr", "lo", "hi"], ["r6"], name="relu6"),
        helper.make_node("LeakyRelu", ["r6"], ["lr"], name="leaky", alpha=0.1),
        helper.make_node("MaxPool", ["lr"], ["m"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["m"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], name="fc", transB=1),
    ]
    return make_model(nodes, [("x", [1, 2, 6, 6])], [("y", [1, 4])], inits, name="piecewise")


def seed_models() -> list[onnx.ModelProto]:
    return [tiny_nets.mlp(0)[0], tiny_nets.conv_bn_pool(0)[0], tiny_nets.residual_concat(0)[0],
            tiny_nets.everything(0)[0], tiny_nets.matmul_net(0)[0], shape_arith_net(), piecewise_net()]


SEEDS = seed_models()
SEED_BYTES = [m.SerializeToString() for m in SEEDS]

OP_TYPES = ["Conv", "Gemm", "MatMul", "Relu", "Add", "Sub", "Mul", "Div", "Sum", "Concat", "Flatten", "Reshape",
            "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast", "Constant", "MaxPool", "AveragePool",
            "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "DequantizeLinear", "QuantizeLinear", "Softmax",
            "Sigmoid", "If", "Loop", "Scan", "Pad", "Shape", "Gather", "ConstantOfShape", "Expand", "Tile", "Range",
            "Slice", "Split", "ConvTranspose", "LeakyRelu", "PRelu", "Clip", "Max", "Min", "Abs", "Neg", "NoSuchOp", ""]
ATTR_NAMES = ["group", "strides", "pads", "dilations", "kernel_shape", "auto_pad", "axis", "axes", "perm", "transA",
              "transB", "alpha", "beta", "epsilon", "ceil_mode", "count_include_pad", "keepdims", "to", "value",
              "storage_order", "allowzero", "start", "end", "ratio", "then_branch"]
BOUNDARY_INTS = [0, 1, 2, 3, -1, -2, 7, 64, 2**31 - 1, 2**31, 2**40, 10**12, -(2**63), 2**63 - 1]
BOUNDARY_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-45, 1e38, 3.4e38, float("nan"), float("inf"), float("-inf")]
DTYPES = [t for t in TensorProto.DataType.values() if t != TensorProto.UNDEFINED] + [TensorProto.UNDEFINED, 99]


class Chooser:
    """Random choices drawn from hypothesis (so that failures shrink and replay)."""

    def __init__(self, data):
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def choice(self, seq):
        return self.data.draw(st.sampled_from(list(seq)))

    def bytes(self, lo: int, hi: int) -> bytes:
        return self.data.draw(st.binary(min_size=lo, max_size=hi))

    def small_or_boundary_int(self) -> int:
        return self.choice(BOUNDARY_INTS) if self.int(0, 1) else self.int(-4, 16)

    def float(self) -> float:
        return self.choice(BOUNDARY_FLOATS) if self.int(0, 1) else self.data.draw(st.floats(-1e6, 1e6))


# --------------------------------------------------------------------------------------------
# byte-level mutations
# --------------------------------------------------------------------------------------------


def mutate_bytes(c: Chooser, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(c.int(1, 4)):
        kind = c.choice(["flip", "flip", "truncate", "splice", "insert", "delete", "duplicate"])
        n = len(buf)
        if n == 0:
            break
        if kind == "flip":
            i = c.int(0, n - 1)
            buf[i] ^= 1 << c.int(0, 7)
        elif kind == "truncate":
            del buf[c.int(0, n - 1):]
        elif kind == "splice":  # a slice of any seed written over a random position
            donor = c.choice(SEED_BYTES)
            a = c.int(0, len(donor) - 1)
            piece = donor[a: a + c.int(1, 64)]
            i = c.int(0, n - 1)
            buf[i: i + len(piece)] = piece
        elif kind == "insert":
            i = c.int(0, n)
            buf[i:i] = c.bytes(1, 16)
        elif kind == "delete":
            i = c.int(0, n - 1)
            del buf[i: i + c.int(1, 32)]
        else:  # duplicate a slice in place
            i = c.int(0, n - 1)
            buf[i:i] = buf[i: i + c.int(1, 64)]
    return bytes(buf)


# --------------------------------------------------------------------------------------------
# structure-aware mutations
# --------------------------------------------------------------------------------------------


def _schema_attributes(node: onnx.NodeProto, opset: int) -> dict[str, int]:
    """The attribute names and types the ONNX schema of ``node`` declares (empty if it has none)."""
    if not onnx.defs.has(node.op_type, max(opset, 1), node.domain):
        return {}
    return {k: int(v.type) for k, v in onnx.defs.get_schema(node.op_type, max(opset, 1), node.domain).attributes.items()}


def _random_attribute(c: Chooser, name: str, attr_type: int | None) -> AttributeProto:
    """A random value for attribute ``name``: mostly of its schema type ``attr_type``, else of any type."""
    kinds = {AttributeProto.INT: "int", AttributeProto.INTS: "ints", AttributeProto.FLOAT: "float",
             AttributeProto.FLOATS: "floats", AttributeProto.STRING: "string", AttributeProto.TENSOR: "tensor",
             AttributeProto.GRAPH: "graph"}
    kind = kinds[attr_type] if attr_type in kinds and c.int(0, 3) else c.choice(sorted(set(kinds.values())))
    if kind == "int":
        return helper.make_attribute(name, c.small_or_boundary_int())
    if kind == "ints":
        return helper.make_attribute(name, [c.small_or_boundary_int() for _ in range(c.int(0, 6))],
                                     attr_type=AttributeProto.INTS)
    if kind == "float":
        return helper.make_attribute(name, c.float())
    if kind == "floats":
        return helper.make_attribute(name, [c.float() for _ in range(c.int(0, 4))], attr_type=AttributeProto.FLOATS)
    if kind == "string":
        return helper.make_attribute(name, c.choice(["", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER", "BOGUS", "\x00"]))
    if kind == "tensor":
        values = [c.float() for _ in range(c.int(0, 3))] if c.int(0, 1) else [c.small_or_boundary_int()]
        return helper.make_attribute(name, numpy_helper.from_array(np.array(values, np.float32 if c.int(0, 1) else np.int64)
                                                                   if all(np.isfinite(values)) and abs(max(values, default=0)) < 2**62
                                                                   else np.array(values, np.float32)))
    body = helper.make_graph([helper.make_node("Relu", ["x"], ["z"])], "body", [],
                             [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    return helper.make_attribute(name, body)


def _mutate_attr(c: Chooser, m: onnx.ModelProto, node, names: list[str]) -> None:
    """Set (a schema attribute, mostly) to a random value, or drop it."""
    if node is None:
        return
    schema = _schema_attributes(node, m.opset_import[0].version)
    name = c.choice(sorted(schema) or ATTR_NAMES) if c.int(0, 3) else c.choice(ATTR_NAMES)
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + ([_random_attribute(c, name, schema.get(name))] if c.int(0, 4) else []))


def _mutate_dims(c: Chooser, m: onnx.ModelProto, node, names: list[str]) -> None:
    """Set, add or drop one dimension of an initializer (its data left as it is)."""
    if not len(m.graph.initializer):
        return
    t = c.choice(m.graph.initializer)
    dims = list(t.dims)
    op = c.choice(["set", "add", "drop"])
    if op == "set" and dims:
        dims[c.int(0, len(dims) - 1)] = c.small_or_boundary_int()
    elif op == "add":
        dims.insert(c.int(0, len(dims)), c.small_or_boundary_int())
    elif dims:
        dims.pop(c.int(0, len(dims) - 1))
    del t.dims[:]
    t.dims.extend(dims)


def _mutate_input_dims(c: Chooser, m: onnx.ModelProto, node, names: list[str]) -> None:
    """One dimension of the first graph input: a boundary value or a symbolic name."""
    if not len(m.graph.input):
        return
    shape = m.graph.input[0].type.tensor_type.shape
    if len(shape.dim):
        dim = shape.dim[c.int(0, len(shape.dim) - 1)]
        if c.int(0, 3):
            dim.dim_value = c.small_or_boundary_int()
        else:
            dim.dim_param = c.choice(["N", "", "batch"])


def _mutate_dtype(c: Chooser, m: onnx.ModelProto, node, names: list[str]) -> None:
    if len(m.graph.initializer):
        c.choice(m.graph.initializer).data_type = c.choice(DTYPES)


def _mutate_input_dtype(c: Chooser, m: onnx.ModelProto, node, names: list[str]) -> None:
    if len(m.graph.input):
        m.graph.input[0].type.tensor_type.elem_type = c.choice(DTYPES)


def _mutate_inputs(c: Chooser, m: onnx.ModelProto, node, names: list[str]) -> None:
    """Drop, duplicate, empty, rename or swap a node's inputs."""
    if node is None:
        return
    ins = list(node.input)
    op = c.choice(["drop", "duplicate", "empty", "rename", "swap"])
    if op == "drop" and ins:
        ins.pop(c.int(0, len(ins) - 1))
    elif op == "duplicate" and ins:
        ins.insert(c.int(0, len(ins)), c.choice(ins))
    elif op == "empty" and ins:
        ins[c.int(0, len(ins) - 1)] = ""
    elif op == "rename" and ins:
        ins[c.int(0, len(ins) - 1)] = c.choice(names + ["ghost"])
    elif len(ins) > 1:
        i, j = c.int(0, len(ins) - 1), c.int(0, len(ins) - 1)
        ins[i], ins[j] = ins[j], ins[i]
    del node.input[:]
    node.input.extend(ins)


def _mutate_op_type(c: Chooser, m: onnx.ModelProto, node, names: list[str]) -> None:
    if node is not None:
        node.op_type = c.choice(OP_TYPES)


def _mutate_node(c: Chooser, m: onnx.ModelProto, node, names: list[str]) -> None:
    """Remove or duplicate a node, or rename its first output."""
    if node is None:
        return
    op = c.choice(["remove", "duplicate", "rename_output"])
    if op == "remove":
        m.graph.node.remove(node)
    elif op == "duplicate":
        m.graph.node.insert(c.int(0, len(m.graph.node)), node)
    elif len(node.output):
        node.output[0] = c.choice(names + ["fresh"])


def _mutate_opset(c: Chooser, m: onnx.ModelProto, node, names: list[str]) -> None:
    m.opset_import[0].version = c.choice([0, 1, 6, 7, 11, 13, 17, 21, 99, -5])


def _mutate_values(c: Chooser, m: onnx.ModelProto, node, names: list[str]) -> None:
    """One entry of an initializer set to a boundary or random float (cast to its own dtype)."""
    if not len(m.graph.initializer):
        return
    t = c.choice(m.graph.initializer)
    try:
        arr = numpy_helper.to_array(t).astype(np.float64)
    except Exception:  # noqa: BLE001 (a tensor an earlier mutation broke: leave it)
        return
    if arr.size:
        flat = arr.reshape(-1)
        flat[c.int(0, flat.size - 1)] = c.float()
        with np.errstate(all="ignore"):
            t.CopyFrom(numpy_helper.from_array(flat.reshape(arr.shape).astype(helper.tensor_dtype_to_np_dtype(
                t.data_type)), t.name))


def _mutate_outputs(c: Chooser, m: onnx.ModelProto, node, names: list[str]) -> None:
    """Drop a graph output, or add a ghost, an input or a duplicate as one."""
    g = m.graph
    op = c.choice(["drop", "ghost", "input", "duplicate"])
    if op == "drop" and len(g.output):
        g.output.pop()
    elif op == "ghost":
        g.output.append(helper.make_tensor_value_info("ghost_out", TensorProto.FLOAT, None))
    elif op == "input" and len(g.input):
        g.output.append(helper.make_tensor_value_info(g.input[0].name, TensorProto.FLOAT, None))
    elif len(g.output):
        g.output.append(g.output[0])


#: the structural mutations, by name (a name listed twice is drawn twice as often)
MUTATIONS = {"attr": _mutate_attr, "dims": _mutate_dims, "input_dims": _mutate_input_dims, "dtype": _mutate_dtype,
             "input_dtype": _mutate_input_dtype, "inputs": _mutate_inputs, "op_type": _mutate_op_type, "node": _mutate_node,
             "opset": _mutate_opset, "values": _mutate_values, "outputs": _mutate_outputs}


def mutate_structure(c: Chooser, model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with 1-3 random structural mutations (each on a random node where it needs one)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    names = [vi.name for vi in g.input] + [t.name for t in g.initializer] + [o for n in g.node for o in n.output]
    for _ in range(c.int(1, 3)):
        kind = c.choice(["attr", "attr", "dims", "input_dims", "dtype", "input_dtype", "inputs", "inputs", "op_type",
                         "node", "opset", "values", "outputs"])
        node = c.choice(g.node) if len(g.node) else None
        MUTATIONS[kind](c, m, node, names)
    return m


def mutated(c: Chooser) -> bytes:
    i = c.int(0, len(SEEDS) - 1)
    kind = c.choice(["bytes", "structure", "both"])
    if kind == "bytes":
        return mutate_bytes(c, SEED_BYTES[i])
    data = mutate_structure(c, SEEDS[i]).SerializeToString()
    return mutate_bytes(c, data) if kind == "both" else data


# --------------------------------------------------------------------------------------------
# the properties
# --------------------------------------------------------------------------------------------


def import_and_norm(data: bytes, q: float):
    """Only PathliftError may escape; anything else fails the test with the offending exception."""
    try:
        return path_norm(import_model(data), q)
    except PathliftError:
        return None


@FUZZ_SETTINGS
@given(st.data())
def test_fuzz_import_and_path_norm(data):
    c = Chooser(data)
    import_and_norm(mutated(c), c.choice([1.0, 2.0]))


@CLI_SETTINGS
@given(st.data())
def test_fuzz_cli_exit_codes(data):
    c = Chooser(data)
    blob = mutated(c)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(blob)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(["norm", str(path), "--json"])
    assert rc in (0, 2, 3, 4), (rc, out.getvalue(), err.getvalue())
    assert "internal error" not in err.getvalue() and "Traceback" not in err.getvalue()
    doc = json.loads(out.getvalue())  # one JSON document, success or error
    if rc:
        assert doc["exit_code"] == rc and doc["error"] in {"UsageError", "InvalidModelError", "UnsupportedModelError"}
    else:
        assert doc["norms"]


def test_seeds_are_valid():
    """The mutations start from models that import and get a path-norm."""
    for data in SEED_BYTES:
        assert path_norm(import_model(data), 1).value > 0


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_seed_truncations_are_refused(seed):
    """Every strict prefix of a seed either imports (a prefix can still be a valid model) or raises a
    PathliftError: a deterministic sweep over cut points, complementing the random ones."""
    data = SEED_BYTES[seed]
    for cut in range(0, len(data), max(len(data) // 97, 1)):
        import_and_norm(data[:cut], 1.0)
