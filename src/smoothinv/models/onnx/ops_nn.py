"""Operator handlers for network layers: convolution, pooling, normalization, Gemm, activations."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from smoothinv.models.onnx.plan import Handler, Op, RunContext, _axis, _check_created, _torch_pad_list


def _spatial_pads(op: Op, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]
                  ) -> list[int]:
    """ONNX pads [begin..., end...] for the spatial dims, resolving auto_pad."""
    n = len(kernel)
    mode = str(op.attr("auto_pad", "NOTSET"))
    if mode in ("NOTSET", ""):
        pads = op.ints("pads", [0] * 2 * n)
        assert pads is not None
        if len(pads) != 2 * n or any(p < 0 for p in pads):
            raise ValueError(f"pads {pads} do not fit a {n}-d kernel")
        return pads
    if mode == "VALID":
        return [0] * 2 * n
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad {mode!r} is not supported")
    begins, ends = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        out = -(-int(size) // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - int(size))
        small, large = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else large)
        ends.append(large if mode == "SAME_UPPER" else small)
    return begins + ends


def _pad_spatial(x: torch.Tensor, pads: list[int], value: float, ctx: RunContext, op: Op) -> torch.Tensor:
    n = len(pads) // 2
    if not any(pads):
        return x
    shape = list(x.shape[:2]) + [int(s) + pads[i] + pads[i + n] for i, s in enumerate(x.shape[2:])]
    _check_created(math.prod(shape), ctx, op)
    return F.pad(x, _torch_pad_list(pads[:n], pads[n:]), value=value)


def _symmetric(pads: list[int]) -> list[int] | None:
    n = len(pads) // 2
    return pads[:n] if pads[:n] == pads[n:] else None


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _conv_inputs(args: list, table: dict, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """(x, weight, bias or None, spatial dims n) of a Conv/ConvTranspose node."""
    x, w = args[0], args[1]
    n = w.dim() - 2
    if n not in table:
        raise ValueError(f"{n}-d {what} is not supported")
    return x, w, (args[2] if len(args) > 2 else None), n


def _conv(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x, w, b, n = _conv_inputs(args, _CONV, "convolution")
    kernel = list(w.shape[2:])
    strides = op.ints("strides", [1] * n)
    dilations = op.ints("dilations", [1] * n)
    assert strides is not None and dilations is not None
    pads = _spatial_pads(op, x, kernel, strides, dilations)
    same = _symmetric(pads)
    if same is None:
        x, same = _pad_spatial(x, pads, 0.0, ctx, op), [0] * n
    return _CONV[n](x, w, b, stride=strides, padding=same, dilation=dilations, groups=op.int_attr("group", 1))


def _conv_transpose(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x, w, b, n = _conv_inputs(args, _CONV_T, "transposed convolution")
    if op.attr("output_shape") is not None or str(op.attr("auto_pad", "NOTSET")) not in ("NOTSET", "", "VALID"):
        raise ValueError("output_shape and SAME auto_pad are not supported; export with explicit pads")
    strides = op.ints("strides", [1] * n)
    dilations = op.ints("dilations", [1] * n)
    extra = op.ints("output_padding", [0] * n)
    pads = op.ints("pads", [0] * 2 * n) if str(op.attr("auto_pad", "NOTSET")) != "VALID" else [0] * 2 * n
    assert strides is not None and dilations is not None and extra is not None and pads is not None
    kernel = list(w.shape[2:])
    full = [s * (int(i) - 1) + o + (k - 1) * d + 1
            for i, k, s, d, o in zip(x.shape[2:], kernel, strides, dilations, extra)]
    _check_created(int(x.shape[0]) * int(w.shape[1]) * op.int_attr("group", 1) * math.prod(full), ctx, op)
    y = _CONV_T[n](x, w, b, stride=strides, padding=0, output_padding=extra, groups=op.int_attr("group", 1),
                   dilation=dilations)
    index = [slice(None), slice(None)] + [slice(pads[i], full[i] - pads[i + n]) for i in range(n)]
    return y[tuple(index)]


def _pool_geometry(op: Op, x: torch.Tensor) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = op.ints("kernel_shape")
    if not kernel:
        raise ValueError("kernel_shape is required")
    n = len(kernel)
    if x.dim() != n + 2:
        raise ValueError(f"a {n}-d pool needs a rank-{n + 2} input, got rank {x.dim()}")
    strides = op.ints("strides", [1] * n)
    dilations = op.ints("dilations", [1] * n)
    assert strides is not None and dilations is not None
    return kernel, strides, dilations, _spatial_pads(op, x, kernel, strides, dilations)


def _max_pool(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    kernel, strides, dilations, pads = _pool_geometry(op, x)
    same = _symmetric(pads)
    if same is None or any(p > k // 2 for p, k in zip(same, kernel)):
        x, same = _pad_spatial(x, pads, float("-inf"), ctx, op), [0] * len(kernel)
    return _MAX_POOL[len(kernel)](x, kernel, strides, same, dilations, ceil_mode=bool(op.int_attr("ceil_mode", 0)))


def _average_pool(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    kernel, strides, dilations, pads = _pool_geometry(op, x)
    if any(d != 1 for d in dilations):
        raise ValueError("dilated AveragePool is not supported")
    include = bool(op.int_attr("count_include_pad", 0))
    ceil = bool(op.int_attr("ceil_mode", 0))
    pool = _AVG_POOL[len(kernel)]
    same = _symmetric(pads)
    if same is not None and all(p <= k // 2 for p, k in zip(same, kernel)):
        return pool(x, kernel, strides, same, ceil_mode=ceil, count_include_pad=include)
    area = math.prod(kernel)
    total = pool(_pad_spatial(x, pads, 0.0, ctx, op), kernel, strides, 0, ceil_mode=ceil) * area
    if include:
        return total / area
    ones = _pad_spatial(torch.ones_like(x[:1, :1]), pads, 0.0, ctx, op)
    return total / (pool(ones, kernel, strides, 0, ceil_mode=ceil) * area)


def _global_pool(reduce: str) -> Handler:
    def run(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
        x = args[0]
        dims = tuple(range(2, x.dim()))
        return x.mean(dims, keepdim=True) if reduce == "mean" else x.amax(dims, keepdim=True)
    return run


def _batch_norm(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    if op.int_attr("training_mode", 0) or not op.int_attr("spatial", 1):
        raise ValueError("training-mode or non-spatial BatchNormalization is not supported")
    x, scale, bias, mean, var = args[:5]
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = torch.rsqrt(var.reshape(shape) + op.float_attr("epsilon", 1e-5))
    return (x - mean.reshape(shape)) * inv * scale.reshape(shape) + bias.reshape(shape)


def _layer_norm(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x, scale = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    axis = _axis(op.int_attr("axis", -1), x.dim())
    dims = tuple(range(axis, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = (x - mean).square().mean(dims, keepdim=True)
    y = (x - mean) * torch.rsqrt(var + op.float_attr("epsilon", 1e-5)) * scale
    return y if bias is None else y + bias


def _instance_norm(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x, scale, bias = args[:3]
    return F.instance_norm(x, weight=scale, bias=bias, eps=op.float_attr("epsilon", 1e-5))


def _gemm(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    a, b = args[0], args[1]
    c = args[2] if len(args) > 2 else None
    if op.int_attr("transA", 0):
        a = a.transpose(0, 1)
    if op.int_attr("transB", 0):
        b = b.transpose(0, 1)
    y = op.float_attr("alpha", 1.0) * (a @ b)
    return y if c is None else y + op.float_attr("beta", 1.0) * c


def _leaky_relu(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    return F.leaky_relu(args[0], op.float_attr("alpha", 0.01))


def _prelu(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x, slope = args
    return torch.where(x >= 0, x, x * slope)


def _elu(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    return F.elu(args[0], op.float_attr("alpha", 1.0))


def _selu(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    alpha = op.float_attr("alpha", 1.67326319217681884765625)
    gamma = op.float_attr("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


def _hard_sigmoid(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    return torch.clamp(op.float_attr("alpha", 0.2) * args[0] + op.float_attr("beta", 0.5), 0.0, 1.0)


def _hard_swish(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    return x * torch.clamp(x / 6 + 0.5, 0.0, 1.0)


def _gelu(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    return F.gelu(args[0], approximate="tanh" if op.attr("approximate") == "tanh" else "none")


def _clip(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    x = args[0]
    if op.opset < 11:
        low, high = op.attr("min"), op.attr("max")
    else:
        low = args[1] if len(args) > 1 else None
        high = args[2] if len(args) > 2 else None
    if low is not None:
        x = torch.maximum(x, torch.as_tensor(low, dtype=x.dtype, device=x.device))
    if high is not None:
        x = torch.minimum(x, torch.as_tensor(high, dtype=x.dtype, device=x.device))
    return x


def _softmax(log: bool) -> Handler:
    def run(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
        x = args[0]
        fn = torch.log_softmax if log else torch.softmax
        if op.opset >= 13:
            return fn(x, _axis(op.int_attr("axis", -1), x.dim()))
        axis = _axis(op.int_attr("axis", 1), x.dim())  # before opset 13: over the flattened trailing dims
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return fn(flat, 1).reshape(x.shape)
    return run


def _mish(op: Op, ctx: RunContext, args: list) -> torch.Tensor:
    return F.mish(args[0])
