"""Read an ONNX file into a plan: parse, refuse what cannot be bounded, decode tensors.

``read_onnx`` is the entry point; the refusals are listed in the package docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
import torch
from onnx import AttributeProto, TensorProto
from torch import nn

from smoothinv.errors import SmoothInvError
from smoothinv.models.messages import one_line
from smoothinv.models.onnx.module import OnnxGraph, _batch_mode
from smoothinv.models.onnx.operators import HANDLERS
from smoothinv.models.onnx.plan import _DTYPES, ImageInput, Op


MAX_ONNX_BYTES = 2**31 - 1  # protobuf's limit on one message; larger models use external data
MAX_NODES = 100_000
MAX_FIXED_BATCH = 1024  # a larger exported batch size is refused as absurd
MIN_OPSET, MAX_OPSET = 7, 23  # standard-domain opsets whose operator semantics are implemented here
CONTROL_FLOW = ("If", "Loop", "Scan", "SequenceMap")
STANDARD_DOMAINS = ("", "ai.onnx")

_FLOAT_INPUTS = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


class OnnxRefused(SmoothInvError):
    """The ONNX file uses something this reader will not run; the message says what."""


@dataclass(frozen=True)
class OnnxModel:
    """What ``read_onnx`` returns: the module and the input shape the graph declares.

    ``channels``/``input_size`` are None where the graph leaves them symbolic.
    """

    module: nn.Module
    channels: int | None
    input_size: tuple[int, int] | None


def read_onnx(path: Path, check_image_shape: Callable[[int | None, tuple[int, int] | None], None]) -> OnnxModel:
    """Parse, check and convert the ONNX model at ``path``; nothing from the file runs as code.

    ``check_image_shape(channels, (H, W))`` validates the declared input shape against the
    loader's bounds before anything is allocated for it.
    """
    model = _parse(path)
    opset = _standard_opset(model, path)
    if len(model.functions):
        raise OnnxRefused(f"{path.name} defines its own ONNX functions, which are not supported; "
                          "re-export it with functions inlined")
    graph = model.graph
    _check_nodes(graph, path)
    tensors = {init.name: _decode_tensor(init, f"initializer {init.name!r}", path) for init in graph.initializer}
    if len(graph.sparse_initializer):
        raise OnnxRefused(f"{path.name} holds sparse initializers, which are not supported; re-export it")
    image = _image_input(graph, set(tensors), path)
    check_image_shape(image.channels, image.input_size)
    output = _single_output(graph, path)
    ops = _plan(graph, opset, tensors, path, keep={output})
    module = OnnxGraph(ops, tensors, image.name, output, image.dtype, image.batch)
    if image.batch is not None:
        module.fixed_batch = _batch_mode(module, image)
    return OnnxModel(module, image.channels, image.input_size)


# ----------------------------------------------------------------------------- parsing and checks


def _parse(path: Path) -> onnx.ModelProto:
    """The file as a ModelProto; size-checked first (protobuf cannot exceed 2 GiB)."""
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise OnnxRefused(f"{path.name} is larger than 2 GiB, which no valid ONNX file is; re-export it with "
                          "its weights as external data (model.onnx.data)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(path.read_bytes())
    except (OSError, RecursionError) as exc:
        raise SmoothInvError(f"cannot read {path}: {one_line(exc)}") from None
    except Exception as exc:  # protobuf's DecodeError and friends
        raise SmoothInvError(f"{path.name} is not a valid ONNX model ({one_line(exc)}); "
                             "re-export it with torch.onnx.export") from None
    if not model.HasField("graph") or not len(model.graph.node):
        raise SmoothInvError(f"{path.name} holds no ONNX graph; re-export it with torch.onnx.export")
    return model


def _standard_opset(model: onnx.ModelProto, path: Path) -> int:
    """The standard-domain opset version the graph was written against, within what we implement."""
    versions = [int(o.version) for o in model.opset_import if o.domain in STANDARD_DOMAINS]
    if not versions:
        raise OnnxRefused(f"{path.name} declares no standard ONNX opset; re-export it with torch.onnx.export")
    opset = max(versions)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxRefused(f"{path.name} uses ONNX opset {opset}; supported: {MIN_OPSET} to {MAX_OPSET}; "
                          f"re-export it with opset_version={min(max(opset, 17), MAX_OPSET)}")
    return opset


def _check_nodes(graph: onnx.GraphProto, path: Path) -> None:
    """Refuse custom domains, control flow and unknown operators, naming them, before anything runs."""
    if len(graph.node) > MAX_NODES:
        raise OnnxRefused(f"{path.name} has {len(graph.node)} nodes; at most {MAX_NODES} are supported")
    custom = sorted({f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in STANDARD_DOMAINS})
    if custom:
        raise OnnxRefused(f"{path.name} uses custom operators ({_few(custom)}); only standard ONNX operators "
                          "can be read: re-export without custom ops")
    flow = sorted({n.op_type for n in graph.node if n.op_type in CONTROL_FLOW}
                  | {n.op_type for n in graph.node
                     if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in n.attribute)})
    if flow:
        raise OnnxRefused(f"{path.name} uses control flow ({_few(flow)}), which is refused (it can run without "
                          "end); export the model for a fixed input shape so the graph has no loops or branches")
    unknown = sorted({n.op_type for n in graph.node if n.op_type not in HANDLERS and n.op_type != "Constant"})
    if unknown:
        raise OnnxRefused(f"{path.name} uses ONNX operators smoothinv cannot run: {_few(unknown)}; "
                          "export the model as safetensors of a registered architecture, or simplify its graph")


def _few(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _image_input(graph: onnx.GraphProto, initializers: set[str], path: Path) -> ImageInput:
    """The single non-initializer input, which must be a float tensor [batch, C, H, W]."""
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = _few([repr(i.name) for i in inputs]) if inputs else "none"
        raise OnnxRefused(f"{path.name} has {len(inputs)} graph inputs ({names}); smoothinv feeds one image "
                          "batch [batch, channels, H, W]: export the model with a single input")
    value = inputs[0]
    kind = value.type.WhichOneof("value")
    elem = value.type.tensor_type.elem_type if kind == "tensor_type" else None
    if elem not in _FLOAT_INPUTS:
        what = TensorProto.DataType.Name(elem) if elem in TensorProto.DataType.values() else str(kind)
        raise OnnxRefused(f"{path.name}'s input {value.name!r} is {what}, not a float image tensor; "
                          "export the model with float input")
    dims: list[int | None] = [None] * 4
    if value.type.tensor_type.HasField("shape"):
        shape = value.type.tensor_type.shape.dim
        if len(shape) != 4:
            raise OnnxRefused(f"{path.name}'s input {value.name!r} has rank {len(shape)}; smoothinv feeds images "
                              "[batch, channels, H, W] (rank 4)")
        for i, dim in enumerate(shape):
            if dim.HasField("dim_value"):
                if dim.dim_value < 1:
                    raise OnnxRefused(f"{path.name}'s input {value.name!r} declares size {dim.dim_value} "
                                      f"for dimension {i}; sizes must be positive")
                dims[i] = int(dim.dim_value)
    batch, channels, height, width = dims
    if batch is not None and batch > MAX_FIXED_BATCH:
        raise OnnxRefused(f"{path.name}'s input declares a batch of {batch}; at most {MAX_FIXED_BATCH} is "
                          "supported: export with batch 1 or a dynamic batch")
    size = (height, width) if height is not None and width is not None else None
    return ImageInput(value.name, _DTYPES[elem], batch, channels, size)


def _single_output(graph: onnx.GraphProto, path: Path) -> str:
    if len(graph.output) != 1:
        raise OnnxRefused(f"{path.name} has {len(graph.output)} graph outputs; a classifier has one "
                          "(logits [batch, num_classes]): export only the logits")
    return graph.output[0].name


def _plan(graph: onnx.GraphProto, opset: int, tensors: dict[str, torch.Tensor], path: Path,
          keep: set[str]) -> list[Op]:
    """The nodes as runnable Ops, in order; Constant nodes become tensors.

    Every input must be computed before it is read, so the run never meets a missing value.
    """
    defined = set(tensors) | {i.name for i in graph.input}
    ops: list[Op] = []
    for index, node in enumerate(graph.node):
        label = repr(node.name) if node.name else f"#{index}"
        missing = [name for name in node.input if name and name not in defined]
        if missing:
            raise OnnxRefused(f"{path.name}: node {label} ({node.op_type}) reads {missing[0]!r} before any node "
                              "computes it; the graph is malformed: re-export it")
        attrs = {a.name: _attribute(a, f"node {label}", path) for a in node.attribute}
        if node.op_type == "Constant":
            if len(node.output) != 1:
                raise OnnxRefused(f"{path.name}: Constant node {label} must have one output")
            tensors[node.output[0]] = _constant_value(attrs, label, path)
        else:
            handler, n_results = HANDLERS[node.op_type]
            ops.append(Op(node.op_type, label, tuple(node.input), tuple(node.output), attrs, opset, handler))
            _check_extra_outputs(ops[-1], n_results, graph, index, keep, path)
        defined.update(name for name in node.output if name)
    missing_out = [name for name in keep if name not in defined]
    if missing_out:
        raise OnnxRefused(f"{path.name}: no node computes the graph output {missing_out[0]!r}; re-export it")
    _set_releases(ops, keep)
    return ops


def _check_extra_outputs(op: Op, n_results: int | None, graph: onnx.GraphProto, index: int, keep: set[str],
                         path: Path) -> None:
    """Refuse a node whose optional extra outputs (MaxPool indices, ...) something reads."""
    if n_results is None or len(op.outputs) <= n_results:
        return
    extra = {name for name in op.outputs[n_results:] if name}
    read = {name for node in list(graph.node)[index + 1:] for name in node.input} | keep
    used = sorted(extra & read)
    if used:
        raise OnnxRefused(f"{path.name}: node {op.label} ({op.kind}) output {used[0]!r} is not supported "
                          "(only the main output is); re-export the model in inference mode")


def _set_releases(ops: list[Op], keep: set[str]) -> None:
    """Mark, on each op, the values it is the last to read (freed after it runs)."""
    last: dict[str, int] = {}
    for i, op in enumerate(ops):
        for name in op.inputs:
            if name:
                last[name] = i
    for i, op in enumerate(ops):
        op.release = tuple(name for name in dict.fromkeys(op.inputs) if name and last.get(name) == i
                           and name not in keep)


def _attribute(attr: AttributeProto, where: str, path: Path) -> object:
    """A node attribute as a Python value; graphs, sparse tensors and type protos are refused."""
    if attr.ref_attr_name:
        raise OnnxRefused(f"{path.name}: {where} refers to a function attribute; functions are not supported")
    kinds: dict[int, Callable[[], object]] = {
        AttributeProto.FLOAT: lambda: float(attr.f),
        AttributeProto.INT: lambda: int(attr.i),
        AttributeProto.STRING: lambda: attr.s.decode("utf-8", "replace"),
        AttributeProto.FLOATS: lambda: [float(v) for v in attr.floats],
        AttributeProto.INTS: lambda: [int(v) for v in attr.ints],
        AttributeProto.STRINGS: lambda: [s.decode("utf-8", "replace") for s in attr.strings],
        AttributeProto.TENSOR: lambda: _decode_tensor(attr.t, f"{where} attribute {attr.name!r}", path),
    }
    if attr.type not in kinds:
        kind = AttributeProto.AttributeType.Name(attr.type) if attr.type in AttributeProto.AttributeType.values() \
            else str(attr.type)
        raise OnnxRefused(f"{path.name}: {where} has a {kind} attribute {attr.name!r}, which is not supported")
    return kinds[attr.type]()


def _constant_value(attrs: dict[str, object], label: str, path: Path) -> torch.Tensor:
    """The tensor a Constant node produces."""
    if "value" in attrs:
        return attrs["value"]  # type: ignore[return-value]
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in attrs:
            return torch.tensor(attrs[key], dtype=dtype)
    raise OnnxRefused(f"{path.name}: Constant node {label} has no supported value ({', '.join(attrs) or 'none'})")


# ----------------------------------------------------------------------------- tensors


def _decode_tensor(proto: TensorProto, where: str, path: Path) -> torch.Tensor:
    """A TensorProto as a torch tensor; its size must match its data, so no allocation exceeds the files."""
    dtype = _DTYPES.get(proto.data_type)
    if dtype is None:
        name = TensorProto.DataType.Name(proto.data_type) if proto.data_type in TensorProto.DataType.values() \
            else str(proto.data_type)
        raise OnnxRefused(f"{path.name}: {where} has element type {name}, which is not supported")
    dims = [int(d) for d in proto.dims]
    if any(d < 0 for d in dims):
        raise OnnxRefused(f"{path.name}: {where} has a negative dimension {dims}")
    if proto.HasField("segment"):
        raise OnnxRefused(f"{path.name}: {where} is a segmented tensor, which is not supported")
    numel = math.prod(dims)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if proto.data_location == TensorProto.EXTERNAL:
        raw = _read_external(proto, numel * itemsize, where, path)
    elif proto.HasField("raw_data"):
        raw = proto.raw_data
        if len(raw) != numel * itemsize:
            raise OnnxRefused(f"{path.name}: {where} declares shape {dims} but holds {len(raw)} bytes; "
                              "the file is corrupt: re-export it")
    else:
        return _typed_values(proto, dtype, dims, numel, where, path)
    if numel == 0:
        return torch.empty(dims, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(dims)


def _typed_values(proto: TensorProto, dtype: torch.dtype, dims: list[int], numel: int, where: str,
                  path: Path) -> torch.Tensor:
    """A tensor stored in TensorProto's typed fields (float_data, int64_data, ...)."""
    if dtype == torch.float32:
        values: Sequence = proto.float_data
    elif dtype == torch.float64:
        values = proto.double_data
    elif dtype == torch.int64:
        values = proto.int64_data
    else:
        values = proto.int32_data  # also float16/bfloat16 bit patterns, int8/16/32, uint8, bool
    if len(values) != numel:
        raise OnnxRefused(f"{path.name}: {where} declares shape {dims} but holds {len(values)} values; "
                          "the file is corrupt: re-export it")
    if dtype in (torch.float16, torch.bfloat16):
        bits = np.asarray(values, dtype=np.int64).astype(np.uint16).view(np.int16)
        return torch.from_numpy(bits.copy()).view(dtype).reshape(dims)
    return torch.tensor(list(values), dtype=torch.float64 if dtype.is_floating_point else torch.int64
                        ).to(dtype).reshape(dims)


def _read_external(proto: TensorProto, nbytes: int, where: str, path: Path) -> bytes:
    """A tensor's bytes from an external data file, which must be a regular file in the model's folder."""
    info = {entry.key: entry.value for entry in proto.external_data}
    location = info.get("location", "")
    folder = path.parent.resolve()
    if not location or _escapes(location):
        raise OnnxRefused(f"{path.name}: {where} points to external data {location[:80]!r} outside the model's "
                          "folder, which is refused; keep the .data file next to the model")
    target = (folder / location).resolve()
    if not target.is_relative_to(folder):
        raise OnnxRefused(f"{path.name}: {where}'s external data {location[:80]!r} links outside the model's "
                          "folder, which is refused; copy the real file next to the model")
    if not target.is_file():
        raise OnnxRefused(f"{path.name}: {where} needs the external data file {location[:80]!r} next to the "
                          "model, which is missing; copy it there too")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info.get("length", str(nbytes)))
    except ValueError:
        raise OnnxRefused(f"{path.name}: {where} has a malformed external data offset or length") from None
    available = target.stat().st_size
    if length != nbytes or offset < 0 or offset + length > available:
        raise OnnxRefused(f"{path.name}: {where} needs {nbytes} bytes at offset {offset} of {location[:80]!r}, "
                          f"which holds {available}; the files do not match: re-export the model")
    with open(target, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _escapes(location: str) -> bool:
    """True for absolute paths, drive letters and any '..' part, in POSIX or Windows spelling."""
    for pure in (PurePosixPath(location), PureWindowsPath(location)):
        if pure.is_absolute() or pure.drive or pure.root or ".." in pure.parts:
            return True
    return "\x00" in location
