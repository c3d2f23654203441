"""The nn.Module that runs a planned ONNX graph, and the trial that decides its batch mode."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from smoothinv.errors import SmoothInvError
from smoothinv.models.messages import one_line
from smoothinv.models.onnx.plan import MAX_CREATED_PER_IMAGE, ImageInput, Op, RunContext


class OnnxGraph(nn.Module):
    """An ONNX graph run node by node with torch ops; differentiable in its input.

    x: [B, C, H, W] images (cast to the graph's input type) -> its output, floating outputs
    as float32 (logits [B, K] for a classifier). Initializers and constants are buffers,
    so ``.to(device)`` moves them. ``fixed_batch`` (None: any) cuts larger batches into
    chunks of that size, padding the last with zeros.
    """

    def __init__(self, ops: list[Op], tensors: Mapping[str, torch.Tensor], input_name: str, output_name: str,
                 input_dtype: torch.dtype, fixed_batch: int | None) -> None:
        super().__init__()
        self.ops = ops
        self.input_name = input_name
        self.output_name = output_name
        self.input_dtype = input_dtype
        self.fixed_batch = fixed_batch
        self._buffer_of: dict[str, str] = {}
        for i, (name, tensor) in enumerate(tensors.items()):
            self.register_buffer(f"t{i}", tensor)
            self._buffer_of[name] = f"t{i}"

    def extra_repr(self) -> str:
        return f"nodes={len(self.ops)}, tensors={len(self._buffer_of)}, fixed_batch={self.fixed_batch}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.fixed_batch
        if size is None or x.shape[0] == size:
            return self.run(x)
        outputs = []
        for chunk in torch.split(x, size):
            n = chunk.shape[0]
            if n < size:
                chunk = torch.cat([chunk, chunk.new_zeros((size - n, *chunk.shape[1:]))])
            outputs.append(self.run(chunk)[:n])
        return torch.cat(outputs)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """One pass of the graph on ``x`` as it is (no batch chunking)."""
        env: dict[str, torch.Tensor] = {name: getattr(self, buf) for name, buf in self._buffer_of.items()}
        env[self.input_name] = x.to(self.input_dtype)
        ctx = RunContext(limit=MAX_CREATED_PER_IMAGE * max(1, int(x.shape[0]) if x.dim() else 1))
        for op in self.ops:
            args = [env[name] if name else None for name in op.inputs]
            try:
                results = op.handler(op, ctx, args)
            except (SmoothInvError, MemoryError, torch.OutOfMemoryError):
                raise
            except Exception as exc:  # the graph is data from the file: report any failure as one line
                raise SmoothInvError(f"ONNX node {op.label} ({op.kind}) failed: {one_line(exc)}") from None
            if isinstance(results, torch.Tensor):
                results = (results,)
            for name, value in zip(op.outputs, results):
                if name:
                    env[name] = value
            for name in op.release:
                env.pop(name, None)
        out = env[self.output_name]
        return out.float() if out.is_floating_point() else out


# ----------------------------------------------------------------------------- fixed-batch graphs


def _batch_mode(module: OnnxGraph, image: ImageInput) -> int | None:
    """None when the graph gives the same logits on a batch as one chunk at a time, else its batch size.

    Only graphs with a fully declared input shape are tried; the trial uses seeded random images.
    """
    fixed = image.batch
    if fixed is None or image.channels is None or image.input_size is None:
        return fixed
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(fixed + 1, image.channels, *image.input_size, generator=generator)
    try:
        with torch.no_grad():
            together = module.run(x)
            apart = module(x)  # chunks of the fixed size
    except Exception:  # e.g. a Reshape to [1, -1]: the batch really is fixed
        return fixed
    if together.shape != apart.shape or not together.is_floating_point():
        return fixed
    scale = max(1.0, float(apart.abs().max()))
    return None if torch.allclose(together, apart, rtol=1e-4, atol=1e-4 * scale) else fixed
