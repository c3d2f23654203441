"""The plan a read ONNX graph becomes: checked nodes (``Op``) and what running them needs.

``reader`` builds the plan, the handlers in ``ops_nn``/``ops_tensor`` run its nodes and
``module`` runs the whole of it; this module imports none of them, so there is no cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from onnx import TensorProto

from smoothinv.errors import SmoothInvError


MAX_CREATED_PER_IMAGE = 1 << 26  # elements per image an operator may create from a shape (256 MiB fp32)

_DTYPES: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT64: torch.int64,
    TensorProto.INT32: torch.int32,
    TensorProto.INT16: torch.int16,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}


@dataclass(frozen=True)
class ImageInput:
    """The graph's one image input: its name, element type and declared sizes (None: symbolic)."""

    name: str
    dtype: torch.dtype
    batch: int | None
    channels: int | None
    input_size: tuple[int, int] | None


@dataclass(frozen=True)
class RunContext:
    """Per-forward settings handlers need: ``limit`` = most elements an op may create."""

    limit: int


@dataclass
class Op:
    """One checked graph node with decoded attributes, ready to run.

    ``release`` lists the values whose last reader this node is, freed after it runs.
    """

    kind: str
    label: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, object]
    opset: int
    handler: Handler
    release: tuple[str, ...] = field(default=())

    def attr(self, name: str, default: object = None) -> object:
        return self.attrs.get(name, default)

    def ints(self, name: str, default: Sequence[int] | None = None) -> list[int] | None:
        value = self.attrs.get(name)
        if value is None:
            return None if default is None else list(default)
        return [int(v) for v in value]  # type: ignore[union-attr]

    def int_attr(self, name: str, default: int) -> int:
        return int(self.attrs.get(name, default))  # type: ignore[arg-type]

    def float_attr(self, name: str, default: float) -> float:
        return float(self.attrs.get(name, default))  # type: ignore[arg-type]


Handler = Callable[[Op, RunContext, list], "torch.Tensor | tuple[torch.Tensor, ...]"]


# ----------------------------------------------------------------------------- helpers the operator handlers share


def _ints_of(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _check_created(numel: int, ctx: RunContext, op: Op) -> None:
    """Refuse an op that would create more elements than the per-image bound allows."""
    if numel > ctx.limit:
        raise SmoothInvError(f"ONNX node {op.label} ({op.kind}) would create a tensor of {numel} elements, more "
                             f"than the {ctx.limit} allowed for this batch; the model is malformed or hostile")


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _torch_pad_list(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """ONNX per-dim (begin, end) pads, first dim first, as F.pad's list (last dim first)."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [b, e]
    return out
