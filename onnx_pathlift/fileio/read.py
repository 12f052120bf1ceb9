"""Read an ONNX model safely: protobuf decoding, size checks on declared sizes, external data.

Everything here runs before a tensor is allocated: :func:`check_sizes` bounds every stored tensor,
the node count and the graph's width by :class:`Limits`; :func:`load_external_data` reads external
tensors only from inside the model's own folder, exactly the bytes their shape needs.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf import descriptor_pool, message_factory
from onnx import ModelProto, TensorProto, helper

from ..errors import InvalidModelError, OutOfMemoryError
from ..sanitise import terminal
from .prefetch import max_file_bytes
from .wire import decoded_bytes, varint_bytes, within_limit


@dataclass(frozen=True)
class Limits:
    """Resource limits, checked on declared sizes before anything is allocated.

    ``max_tensor_elements`` bounds any one stored or folded constant (initializer, ``Constant``
    value, external tensor, result of a constant subgraph), ``max_total_bytes`` all of them
    together, ``max_activation_elements`` any one activation (what onnxruntime allocates when it
    runs the lifted network: 2**28 float32 elements are 1 GiB), ``max_nodes`` the nodes of the graph,
    its subgraphs and its functions, ``max_node_inputs`` the inputs of any one node (a ``Sum`` or
    ``Concat`` of that many operands), ``max_graph_io`` the main graph's inputs (initializers listed as
    inputs aside) plus its outputs.
    The last three bound time: onnxruntime builds its sessions in time that grows with them
    (docs/fuzzing.md, "Scaling").
    """

    max_tensor_elements: int = 1 << 31
    max_total_bytes: int = 1 << 33
    max_activation_elements: int = 1 << 28
    max_nodes: int = 1 << 15
    max_node_inputs: int = 1 << 12
    max_graph_io: int = 1 << 12


DEFAULT_LIMITS = Limits()
#: the ONNX float element types: the only ones a network is analysed in
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16})
#: the highest tensor rank accepted (numpy stops at 64; no real network comes near)
MAX_RANK = 32
#: element types ONNX packs below a byte (numpy dtype name -> bits)
_SUB_BYTE_BITS = {"int4": 4, "uint4": 4, "float4_e2m1fn": 4, "int2": 2, "uint2": 2, "float6_e2m3fn": 6, "float6_e3m2fn": 6}


def open_regular(path: str | os.PathLike, what: str) -> int:
    """A descriptor open for reading on ``path``, refused (:class:`InvalidModelError`, exit 4) unless it is
    a regular file: checked before opening (``stat``), and again on what was opened (``fstat``: the path
    may have been swapped in between), which is opened without blocking (a FIFO with no writer would
    block ``open`` forever). ``what`` names the file in messages."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise InvalidModelError(f"{what} is not a regular file (a FIFO, device, socket or folder is never read)")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InvalidModelError(f"{what}: cannot read: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidModelError(f"{what} is not a regular file (a FIFO, device, socket or folder is never read)")
    return fd


def read_model_file(path: str | os.PathLike) -> bytes:
    """The bytes of the model file ``path``: a regular file (:func:`open_regular`) of at most
    :func:`~onnx_pathlift.fileio.prefetch.max_file_bytes` bytes; running out of memory is an
    :class:`InvalidModelError` too."""
    limit = max_file_bytes()
    with os.fdopen(open_regular(path, str(path)), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise InvalidModelError(f"{path}: the file is {size} bytes, over the limit of {limit} bytes for a model "
                                    "file (--max-file-size)")
        try:
            data = f.read(size + 1)
        except MemoryError:
            raise OutOfMemoryError(f"{path}: out of memory reading its {size} bytes") from None
        except OSError as exc:
            raise InvalidModelError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > limit:  # it grew after the check
        raise InvalidModelError(f"{path}: the file is over the limit of {limit} bytes for a model file (--max-file-size)")
    return data


def files_read(source: str | os.PathLike) -> list[str | os.PathLike]:
    """``source`` and, when it is a readable model file, the external-data files its tensors name inside
    its folder (those a run reads with it; any other location is refused when it is loaded)."""
    files = [source]
    try:
        data = read_model_file(source)
        if b"location" not in data:  # an external-data entry stores its key "location" verbatim: none here
            return files
        model = parse_model(data, str(source))
    except (InvalidModelError, OSError):  # the run reports it when it loads the model
        return files
    base = Path(source).resolve().parent
    for tensor in _all_tensors(model):
        location = {e.key: e.value for e in tensor.external_data}.get("location")
        if tensor.data_location == TensorProto.EXTERNAL and location and not os.path.isabs(location):
            files.append(base / location)
    return files


#: the memory protobuf may take to decode a model: this many times the file's size plus LAYOUT_SLACK
#: bytes (a graph of 32 768 Gemm nodes, 1 MiB, is counted at 8.7 MiB)
LAYOUT_FACTOR, LAYOUT_SLACK = 2, 16 << 20


def parse_model(data: bytes, where: str, size: int | None = None) -> ModelProto:
    """Decode ``data`` as a ``ModelProto``; refuses empty data, data that protobuf would decode into more
    than :data:`LAYOUT_FACTOR` × ``size`` (the file's size, ``len(data)`` unless told) + :data:`LAYOUT_SLACK`
    bytes (counted first: :func:`~onnx_pathlift.fileio.wire.decoded_bytes`, unless the count provably cannot
    reach that: :func:`~onnx_pathlift.fileio.wire.within_limit`), a failed decode, a model
    without a graph and any string field that is not valid UTF-8 (``where`` names the source in messages)."""
    if not data:
        raise InvalidModelError(f"{where}: empty file")
    size = len(data) if size is None else size
    limit = LAYOUT_FACTOR * size + LAYOUT_SLACK
    need = 0 if within_limit(data, limit) else decoded_bytes(data, limit)
    if need > limit:
        raise InvalidModelError(f"{where}: its {size} bytes would take more than {need >> 20} MiB to decode (counted "
                                f"before decoding), over {LAYOUT_FACTOR}× the file's size + {LAYOUT_SLACK >> 20} MiB")
    checked = len(data) <= CHECKED_DECODE_BYTES and _valid_utf8(data)
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except MemoryError:
        raise OutOfMemoryError(f"{where}: out of memory decoding the model") from None
    except Exception as exc:  # protobuf raises DecodeError, or RuntimeWarning-like errors
        raise InvalidModelError(f"{where}: not an ONNX model (protobuf decode failed: {exc})") from exc
    if not model.HasField("graph"):
        raise InvalidModelError(f"{where}: not an ONNX model (no graph)")
    bad = None if checked else _bad_string(model)
    if bad is not None:
        raise InvalidModelError(f"{where}: not an ONNX model (a string field holds invalid UTF-8: {bad!r})")
    return model


#: data up to this size is checked for UTF-8 by a second decode in C (:func:`_valid_utf8`: twice a plain
#: decode, 2 ms for the 9,321 messages of the light DenseNet-121 where :func:`_bad_string` takes 42 ms);
#: larger data by :func:`_bad_string` alone (the second decode takes 1.2 ns per byte, more than the walk on a
#: file of weights: 17 ms against 10.5 ms on MobileNetV2's 14 MB whole)
CHECKED_DECODE_BYTES = 1 << 20


def _valid_utf8(data: bytes) -> bool:
    """True where protobuf, decoding ``data`` with every string field checked as UTF-8
    (:func:`_checked_model`), accepts it: then every string of the ``ModelProto`` decoded from ``data`` is
    valid (each is the value of one of the fields it checked: the last occurrence of a singular one),
    and :func:`_bad_string` would find none. False where it refuses ``data`` for any reason (then
    :func:`_bad_string` decides, as protobuf's plain decode keeps or drops each value). The message is
    dropped before the model is decoded: one decoded copy in memory at a time."""
    try:
        _checked_model().FromString(data)
    except Exception:  # noqa: BLE001 - DecodeError (bad UTF-8, corrupt data), or no editions in this protobuf
        return False
    return True


#: descriptor.proto's numbers: FileDescriptorProto's options (8), syntax (12) and edition (14, 2023 = 1000);
#: FileOptions' features (50); FeatureSet's enum_type (2) CLOSED (2), repeated_field_encoding (3) EXPANDED
#: (2), utf8_validation (4) VERIFY (2): proto2's rules but for UTF-8, which is checked
_EDITION_2023 = (12, b"editions"), (14, 1000)
_FEATURES = (2, 2), (3, 2), (4, 2)


@functools.cache
def _checked_model() -> type:
    """``ModelProto``'s message class built anew from its own file descriptor, moved to edition 2023 with
    proto2's rules kept (explicit presence, closed enums, the same fields: decoded alike) and
    ``utf8_validation = VERIFY``: upb checks each string field's value as it decodes it, every occurrence
    (one that a later occurrence replaces too), and refuses the data at the first invalid one. The fields
    are appended to the descriptor's wire form (a later one replaces a scalar, merges into a message)."""
    def key(number: int, kind: int) -> bytes:
        return varint_bytes(number << 3 | kind)

    def text(number: int, value: bytes) -> bytes:
        return key(number, 2) + varint_bytes(len(value)) + value

    features = b"".join(key(number, 0) + varint_bytes(value) for number, value in _FEATURES)
    (syntax, name), (edition, year) = _EDITION_2023
    proto = ModelProto.DESCRIPTOR.file.serialized_pb + text(syntax, name) + key(edition, 0) + varint_bytes(year)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(proto + text(8, text(50, features)))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(ModelProto.DESCRIPTOR.full_name))


def _bad_string(message) -> bytes | None:
    """The first string field of ``message`` (recursively) that is not valid UTF-8, or None.

    protobuf decodes strings lazily and hands back invalid ones as ``bytes`` (or raises later);
    checking them once here keeps every name a ``str``. Bytes fields (tensor data) are skipped."""
    for name, is_message, repeated in _text_fields(message.DESCRIPTOR):
        if not repeated and not message.HasField(name):
            continue
        try:
            values = getattr(message, name) if repeated else [getattr(message, name)]
            for value in values:
                bad = _bad_string(value) if is_message else (value if isinstance(value, bytes) else None)
                if bad is not None:
                    return bad
        except UnicodeDecodeError as exc:
            return exc.object
    return None


@functools.cache
def _text_fields(descriptor) -> tuple[tuple[str, bool, bool], ...]:
    """(name, is a message, is repeated) of the string and message fields of a message type."""
    fields = []
    for f in descriptor.fields:
        if f.type in (f.TYPE_STRING, f.TYPE_MESSAGE):
            repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED  # protobuf < 5.28
            fields.append((f.name, f.type == f.TYPE_MESSAGE, repeated))
    return tuple(fields)


def _subgraphs(nodes):
    """Every graph nested in the nodes' attributes (If/Loop/Scan bodies), recursively."""
    for node in nodes:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs):
                yield sub
                yield from _subgraphs(sub.node)


def _graphs(model: ModelProto):
    """The main graph and every subgraph, including those inside the model's local functions."""
    yield model.graph
    yield from _subgraphs(model.graph.node)
    for function in model.functions:
        yield from _subgraphs(function.node)


def _graph_walk(model: ModelProto) -> Callable[[], Iterable[onnx.GraphProto]]:
    """:func:`_graphs` to walk again and again: the main graph alone where nothing is nested (one walk
    of the attributes to know it, instead of one per use), else the walk itself, each time anew."""
    if next(itertools.islice(_graphs(model), 1, None), None) is None:
        return lambda: (model.graph,)
    return lambda: _graphs(model)


def _all_nodes(model: ModelProto, graphs: Callable[[], Iterable[onnx.GraphProto]] | None = None):
    """Every node: of the main graph, its subgraphs and the model's functions (``graphs``: a
    :func:`_graph_walk` of the model, to reuse)."""
    for graph in (graphs or _graph_walk(model))():
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _all_tensors(model: ModelProto, graphs: Callable[[], Iterable[onnx.GraphProto]] | None = None):
    """Every tensor stored in the model: initializers (a sparse one as its values and indices) and
    tensor attributes, in the graph, its subgraphs and the model's functions (one at a time: a file may
    hold millions; the attributes' sparse tensors after a second walk, only where the first met one;
    ``graphs``: a :func:`_graph_walk` of the model, to reuse)."""
    graphs = graphs or _graph_walk(model)
    for graph in graphs():
        yield from graph.initializer
    sparse = False
    for node in _all_nodes(model, graphs):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparse = sparse or attr.HasField("sparse_tensor") or len(attr.sparse_tensors) > 0
    for graph in graphs():
        yield from _sparse_parts(graph.sparse_initializer)
    if not sparse:
        return
    for node in _all_nodes(model, graphs):
        for attr in node.attribute:
            yield from _sparse_parts([attr.sparse_tensor] if attr.HasField("sparse_tensor") else [])
            yield from _sparse_parts(attr.sparse_tensors)


def _sparse_parts(tensors):
    """The values and indices of sparse tensors, where not empty."""
    for tensor in tensors:
        for part in ("values", "indices"):
            if tensor.HasField(part) and getattr(tensor, part).ByteSize():
                yield getattr(tensor, part)


def _elements(tensor: TensorProto, limits: Limits) -> int:
    """The declared element count of a tensor, refused when negative, over the limit, or of a rank
    over :data:`MAX_RANK`."""
    if len(tensor.dims) > MAX_RANK:
        raise InvalidModelError(f"tensor {tensor.name!r} has rank {len(tensor.dims)} (limit {MAX_RANK})")
    dims = tuple(tensor.dims)
    if any(d < 0 for d in dims):
        raise InvalidModelError(f"tensor {tensor.name!r} declares a negative dimension {dims}")
    n = math.prod(dims)
    if n > limits.max_tensor_elements:
        raise InvalidModelError(f"tensor {tensor.name!r} declares {n} elements {dims} (limit {limits.max_tensor_elements})")
    return n


def _nbytes(tensor: TensorProto, n: int) -> int:
    """Bytes that ``n`` elements of the tensor's type take (packed for sub-byte types)."""
    bits = _element_bits(tensor.data_type)
    if bits is None:
        raise InvalidModelError(f"tensor {tensor.name!r} has an unknown data type {tensor.data_type}")
    return -(-n * bits // 8)


@functools.lru_cache(maxsize=256)
def _element_bits(data_type: int) -> int | None:
    """Bits of one element of an ONNX data type (None for a type ONNX does not define)."""
    try:
        dtype = helper.tensor_dtype_to_np_dtype(data_type)
    except KeyError:
        return None
    return _SUB_BYTE_BITS.get(dtype.name, 8 * dtype.itemsize)


def check_sizes(model: ModelProto, limits: Limits) -> list[TensorProto]:
    """Declared sizes of every stored tensor, the node count and the graph's width, against the limits;
    returns the tensors whose data is external (for :func:`load_external_data`: one walk of the tensors for both)."""
    g = model.graph
    if len(g.input) + len(g.output) > limits.max_graph_io:  # IR < 4 lists initializers as inputs: not those
        stored = {t.name for t in g.initializer}
        inputs = sum(1 for vi in g.input if vi.name not in stored)
        if inputs + len(g.output) > limits.max_graph_io:
            raise InvalidModelError(f"the graph has {inputs} inputs and {len(g.output)} outputs "
                                    f"(limit {limits.max_graph_io} in all)")
    nodes, wide, graphs = 0, None, _graph_walk(model)
    for node in _all_nodes(model, graphs):  # one walk: the count is refused first, then the first wide node
        nodes += 1
        if wide is None and len(node.input) > limits.max_node_inputs:
            wide = node
    if nodes > limits.max_nodes:
        raise InvalidModelError(f"the model has {nodes} nodes (limit {limits.max_nodes})")
    if wide is not None:
        raise InvalidModelError(f"node {wide.name!r} ({terminal(wide.op_type)}) has {len(wide.input)} inputs "
                                f"(limit {limits.max_node_inputs})")
    total, external = 0, []
    for tensor in _all_tensors(model, graphs):
        if tensor.data_location == TensorProto.EXTERNAL:
            external.append(tensor)
        if tensor.HasField("segment"):  # onnx's readers refuse it too (numpy_helper.to_array)
            raise InvalidModelError(f"tensor {tensor.name!r} is a segment of a larger tensor (TensorProto.segment), "
                                    "which is not supported")
        total += _nbytes(tensor, _elements(tensor, limits))
        if total > limits.max_total_bytes:
            raise InvalidModelError(f"the model's tensors declare more than {limits.max_total_bytes} bytes "
                                    f"(limit reached at tensor {tensor.name!r})")
    return external


def refuse_external(model: ModelProto) -> None:
    """External tensors left unloaded: only :func:`load_model` with a path reads them (from its folder)."""
    for tensor in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            raise InvalidModelError(f"tensor {tensor.name!r} keeps its data in the external file {location!r}, which is "
                                    "read only when the model is loaded from its path (bytes and ModelProto sources "
                                    "have no folder)")


def load_external_data(model: ModelProto, base: Path, external: list[TensorProto] | None = None) -> None:
    """Load external tensors after checking that every location stays inside ``base`` (``external``: the
    model's tensors whose data is external, as :func:`check_sizes` returned them; None: found here)."""
    for tensor in _all_tensors(model) if external is None else external:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        try:
            target = (base / location).resolve()
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except (ValueError, OSError) as exc:
            raise InvalidModelError(f"tensor {tensor.name!r}: bad external data entry {info}: {exc}") from exc
        if not location or os.path.isabs(location) or not target.is_relative_to(base):
            raise InvalidModelError(
                f"tensor {tensor.name!r}: external data location {location!r} escapes the model folder {base}"
            )
        if not target.exists():
            raise InvalidModelError(f"tensor {tensor.name!r}: external data file {location!r} not found")
        expected = _nbytes(tensor, math.prod(tensor.dims))
        if offset < 0 or (length is not None and length != expected):
            raise InvalidModelError(f"tensor {tensor.name!r}: external data offset {offset}, length {length} do not fit "
                                    f"its {expected} bytes (dims {tuple(tensor.dims)})")
        _read_external(tensor, target, location, offset, expected, exact_end=length is None)


def _read_external(tensor: TensorProto, target: Path, location: str, offset: int, expected: int, exact_end: bool) -> None:
    """Read exactly ``expected`` bytes at ``offset`` into ``tensor.raw_data``, after checking the file's
    size: it must hold them, and without a ``length`` entry (ONNX then means "to the end of the file")
    it must end right after them. Never reads more than ``expected`` bytes, whatever the file's size."""
    fd = open_regular(target, f"tensor {tensor.name!r}: external data file {location!r}")
    try:
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < offset + expected or (exact_end and size != offset + expected):
                raise InvalidModelError(
                    f"tensor {tensor.name!r}: external file {location!r} is {size} bytes, "
                    f"{'needs' if size < offset + expected else 'and without a length entry must be'} "
                    f"{offset + expected} (offset {offset} + {expected} bytes for dims {tuple(tensor.dims)})")
            f.seek(offset)
            data = f.read(expected)
    except OSError as exc:
        raise InvalidModelError(f"tensor {tensor.name!r}: cannot read external data {location!r}: {exc.strerror}") from exc
    if len(data) != expected:  # the file shrank after the size check
        raise InvalidModelError(f"tensor {tensor.name!r}: external file {location!r} ended after {len(data)} of "
                                f"{expected} bytes")
    tensor.raw_data = data
    tensor.data_location = TensorProto.DEFAULT
    del tensor.external_data[:]
