"""Operator handlers for tensors: elementwise math and logic, shapes, indexing, casts, Pad, reductions."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from onnx import TensorProto

from smoothinv.models.onnx.plan import (
    _DTYPES,
    Handler,
    Op,
    RunContext,
    _axis,
    _check_created,
    _ints_of,
    _torch_pad_list,
)


def _div(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    a, b = args
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _pow(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    return torch.pow(args[0], args[1]).to(args[0].dtype)


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mean: bool = False) -> Handler:
    def run(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
        out = args[0]
        for other in args[1:]:
            out = fn(out, other)
        return out / len(args) if mean else out
    return run


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Handler:
    return lambda op, ctx, args: fn(args[0])


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Handler:
    return lambda op, ctx, args: fn(args[0], args[1])


def _flatten(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    axis = op.int_attr("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    if not 0 <= axis <= x.dim():
        raise ValueError(f"axis {axis} is out of range for rank {x.dim()}")
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _reshape(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    shape = _ints_of(args[1]) if op.opset >= 5 else op.ints("shape")
    assert shape is not None
    if not op.int_attr("allowzero", 0):
        shape = [int(x.shape[i]) if d == 0 and i < x.dim() else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _transpose(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    perm = op.ints("perm", list(reversed(range(x.dim()))))
    return x.permute(perm)


def _concat(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    parts = [a for a in args if a is not None]
    return torch.cat(parts, _axis(op.int_attr("axis", 0), parts[0].dim()))


def _axes(op: Op, args: list, index: int, attr_until: int) -> list[int] | None:
    """Axes from the attribute (opsets before ``attr_until``) or from input ``index``."""
    if op.opset < attr_until:
        return op.ints("axes")
    return _ints_of(args[index]) if len(args) > index else None


def _squeeze(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    axes = _axes(op, args, 1, 13)
    if axes is None:
        return x.squeeze()
    dims = tuple(_axis(a, x.dim()) for a in axes)
    if any(x.shape[d] != 1 for d in dims):
        raise ValueError(f"cannot squeeze axes {axes} of shape {list(x.shape)}")
    return x.squeeze(dims)


def _unsqueeze(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    axes = _axes(op, args, 1, 13)
    if axes is None:
        raise ValueError("Unsqueeze needs axes")
    rank = x.dim() + len(axes)
    for axis in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return x


def _shape(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    start = op.int_attr("start", 0)
    end = op.attr("end")
    dims = list(x.shape)[start:None if end is None else int(end)]  # type: ignore[arg-type]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


def _size(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    return torch.tensor(args[0].numel(), dtype=torch.int64, device=args[0].device)


def _gather(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    data, indices = args[0], args[1].long()
    axis = _axis(op.int_attr("axis", 0), data.dim())
    size = data.shape[axis]
    indices = torch.where(indices < 0, indices + size, indices)
    picked = data.index_select(axis, indices.reshape(-1))
    return picked.reshape((*data.shape[:axis], *indices.shape, *data.shape[axis + 1:]))


def _slice(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    if op.opset < 10:
        starts, ends, axes, steps = op.ints("starts"), op.ints("ends"), op.ints("axes"), None
    else:
        starts, ends = _ints_of(args[1]), _ints_of(args[2])
        axes = _ints_of(args[3]) if len(args) > 3 else None
        steps = _ints_of(args[4]) if len(args) > 4 else None
    if starts is None or ends is None or len(starts) != len(ends):
        raise ValueError("Slice needs starts and ends of equal length")
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, x.dim())
        x = _slice_axis(x, axis, start, end, step)
    return x


def _slice_axis(x: torch.Tensor, axis: int, start: int, end: int, step: int) -> torch.Tensor:
    """One axis of Slice with ONNX's clamping rules; negative steps go through index_select."""
    if step == 0:
        raise ValueError("Slice step cannot be 0")
    dim = int(x.shape[axis])
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        index = [slice(None)] * axis + [slice(start, end, step)]
        return x[tuple(index)]
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    positions = torch.arange(start, end, step, device=x.device)
    return x.index_select(axis, positions)


def _constant_of_shape(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    shape = _ints_of(args[0]) or []
    if any(d < 0 for d in shape):
        raise ValueError(f"negative shape {shape}")
    _check_created(math.prod(shape), ctx, op)
    value = op.attr("value")
    if isinstance(value, torch.Tensor):
        return torch.full(shape, value.reshape(-1)[0].item(), dtype=value.dtype, device=args[0].device)
    return torch.zeros(shape, dtype=torch.float32, device=args[0].device)


def _expand(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x, shape = args[0], _ints_of(args[1]) or []
    out = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    _check_created(math.prod(out), ctx, op)
    return x.expand(out)


def _tile(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x, repeats = args[0], _ints_of(args[1]) or []
    if len(repeats) != x.dim() or any(r < 0 for r in repeats):
        raise ValueError(f"repeats {repeats} do not fit rank {x.dim()}")
    _check_created(x.numel() * math.prod(repeats), ctx, op)
    return x.repeat(repeats)


def _split(op: Op, ctx: RunContext, args: list) -> tuple[torch.Tensor, ...]:
    x = args[0]
    axis = _axis(op.int_attr("axis", 0), x.dim())
    sizes = op.ints("split") if op.opset < 13 else (_ints_of(args[1]) if len(args) > 1 else None)
    if sizes is None:
        parts = op.int_attr("num_outputs", len(op.outputs))
        chunk = -(-int(x.shape[axis]) // parts)
        sizes = [min(chunk, int(x.shape[axis]) - i * chunk) for i in range(parts)]
    return tuple(torch.split(x, sizes, axis))


def _where(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    return torch.where(args[0].bool(), args[1], args[2])


def _cast(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    to = op.int_attr("to", TensorProto.FLOAT)
    if to not in _DTYPES:
        raise ValueError(f"Cast to {TensorProto.DataType.Name(to) if to in TensorProto.DataType.values() else to} "
                         "is not supported")
    return args[0].to(_DTYPES[to])


def _cast_like(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    return args[0].to(args[1].dtype)


def _pad(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    mode = str(op.attr("mode", "constant"))
    if op.opset < 11:
        pads, value, axes = op.ints("pads"), op.float_attr("value", 0.0), None
    else:
        pads = _ints_of(args[1])
        value = float(args[2].reshape(-1)[0]) if len(args) > 2 and args[2] is not None and args[2].numel() else 0.0
        axes = _ints_of(args[3]) if len(args) > 3 else None
    axes = [_axis(a, x.dim()) for a in axes] if axes is not None else list(range(x.dim()))
    if pads is None or len(pads) != 2 * len(axes):
        raise ValueError(f"pads {pads} do not fit {len(axes)} axes")
    begins, ends = [0] * x.dim(), [0] * x.dim()
    for i, axis in enumerate(axes):
        begins[axis], ends[axis] = pads[i], pads[i + len(axes)]
    shape = [int(s) + b + e for s, b, e in zip(x.shape, begins, ends)]
    if any(s < 0 for s in shape):
        raise ValueError(f"pads {pads} crop more than the input {list(x.shape)}")
    _check_created(math.prod(shape), ctx, op)
    first = next((d for d in range(x.dim()) if begins[d] or ends[d]), x.dim())
    if mode == "constant":
        return F.pad(x, _torch_pad_list(begins[first:], ends[first:]), value=value)
    if mode not in ("reflect", "edge") or first < 2 or x.dim() - first > 3:
        raise ValueError(f"Pad mode {mode!r} on these axes is not supported")
    return F.pad(x, _torch_pad_list(begins[2:], ends[2:]), mode="reflect" if mode == "reflect" else "replicate")


_REDUCE_ATTR_UNTIL = {"ReduceSum": 13}  # the others took axes as an attribute until opset 18


def _reduce(kind: str) -> Handler:
    def run(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
        x = args[0]
        axes = _axes(op, args, 1, _REDUCE_ATTR_UNTIL.get(op.kind, 18))
        keep = bool(op.int_attr("keepdims", 1))
        if not axes:
            if op.int_attr("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        dims = tuple(sorted(_axis(a, x.dim()) for a in axes))
        if kind == "mean":
            return x.mean(dims, keepdim=keep)
        if kind == "sum":
            return x.sum(dims, keepdim=keep)
        if kind == "max":
            return x.amax(dims, keepdim=keep)
        if kind == "min":
            return x.amin(dims, keepdim=keep)
        for d in reversed(dims):  # prod
            x = x.prod(d, keepdim=keep)
        return x
    return run


def _identity(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    return args[0]


def _not(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    return torch.logical_not(args[0])
