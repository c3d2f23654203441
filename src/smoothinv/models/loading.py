"""Load untrusted classifier files without running code from them.

Formats are recognised by content, not extension:

* safetensors: 8-byte little-endian header length, then a JSON header. Tensors only;
  string metadata may carry ``arch``, ``num_classes``, ``input_size`` ("H,W"),
  ``channels``, ``mean`` and ``std`` (comma-separated floats).
* zip archive: TorchScript when it has ``constants.pkl`` or a ``code/`` folder
  (``torch.jit.load``: TorchScript, not Python), otherwise a ``torch.save`` file.
* legacy ``torch.save`` pickle (starts with a pickle protocol byte).

``torch.save`` files are read with ``weights_only=True``, which refuses pickled Python
objects. A whole pickled model is only unpickled with ``unsafe_pickle=True``, because
unpickling can run arbitrary code from the file.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from smoothinv.errors import SmoothInvError
from smoothinv.models import get_model_info, list_models, model_names

SAFETENSORS = "safetensors"
STATE_DICT = "state_dict"
TORCHSCRIPT = "torchscript"
PICKLE = "pickle"
TORCH_ZIP = "torch_zip"  # a torch.save zip archive (detect_format only)

# Keys under which training scripts commonly nest the real state_dict.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net")
METADATA_KEYS = ("arch", "num_classes", "input_size", "channels", "mean", "std")
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_TORCHSCRIPT_FAILED = "The following operation failed in the TorchScript interpreter"


@dataclass
class LoadedModel:
    """A loaded classifier, ready for inference, and what is known about its inputs.

    ``module`` maps [B, channels, H, W] images to logits [B, num_classes]; when ``mean``
    and ``std`` are set it is a ``Normalize`` wrapper and expects images in [0, 1].
    ``format`` is "safetensors", "state_dict", "torchscript" or "pickle".
    """

    module: nn.Module
    format: str
    arch: str | None
    num_classes: int | None
    input_size: tuple[int, int] | None
    channels: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


@dataclass(frozen=True)
class Hints:
    """Model settings from one source (arguments or file metadata); None = not given."""

    arch: str | None = None
    num_classes: int | None = None
    input_size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def or_else(self, fallback: Hints) -> Hints:
        """These settings, with gaps filled from ``fallback``."""
        values = {}
        for f in fields(self):
            mine = getattr(self, f.name)
            values[f.name] = getattr(fallback, f.name) if mine is None else mine
        return Hints(**values)


class Normalize(nn.Module):
    """Wraps a classifier so callers pass [0, 1] images: ``model((x - mean) / std)``.

    ``mean``/``std`` hold one value per channel (or one value for all channels); they are
    non-persistent buffers, so ``state_dict()`` holds only ``model.*`` keys; the exact
    values are kept as ``mean_values``/``std_values`` tuples.
    x: [B, C, H, W] -> the wrapped model's output.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = _stat_tuple("mean", mean)
        std_t = _stat_tuple("std", std)
        if len(mean_t) != len(std_t):
            raise SmoothInvError(
                f"--mean has {len(mean_t)} values but --std has {len(std_t)}; give one per channel"
            )
        if any(not s > 0 for s in std_t):
            raise SmoothInvError(f"--std values must all be > 0, got {list(std_t)}")
        self.model = model
        self.mean_values = mean_t
        self.std_values = std_t
        self.register_buffer("mean", torch.tensor(mean_t).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std_t).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


# ----------------------------------------------------------------------------- public API


def load_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] | None = None,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    unsafe_pickle: bool = False,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a classifier from ``path`` in eval mode on ``device``, parameters frozen.

    Arguments override the file's safetensors metadata, which overrides the arch's
    registry defaults. State dicts need an arch (argument or metadata). With ``mean``
    and ``std`` the module is wrapped in ``Normalize``. Every user-fixable problem raises
    SmoothInvError.
    """
    path = Path(path)
    torch_device = _parse_device(device)
    if num_classes is not None:
        num_classes = _check_positive_int(num_classes, "--num-classes")
    if input_size is not None:
        input_size = _check_input_size(input_size, "--input-size")
    if channels is not None:
        channels = _check_positive_int(channels, "--channels")
    given = Hints(
        arch=arch,
        num_classes=num_classes,
        input_size=input_size,
        channels=channels,
        mean=None if mean is None else _stat_tuple("mean", mean),
        std=None if std is None else _stat_tuple("std", std),
    )

    kind = detect_format(path)
    hints = given
    module: nn.Module | None = None
    state: dict[str, torch.Tensor] | None = None
    if kind == SAFETENSORS:
        state, raw_metadata = _read_safetensors(path)
        hints = given.or_else(_parse_metadata(raw_metadata, path, given))
        fmt = SAFETENSORS
    elif kind == TORCHSCRIPT:
        module, fmt = _read_torchscript(path), TORCHSCRIPT
    else:
        obj = _unwrap_containers(_torch_load(path, kind, unsafe_pickle))
        if isinstance(obj, nn.Module):
            module, fmt = obj, PICKLE
        else:
            state, fmt = _as_state_dict(obj, path), STATE_DICT

    info = None
    if hints.arch is not None:
        if given.arch is None and hints.arch not in model_names():
            raise SmoothInvError(
                f"{path.name} names an unknown architecture {hints.arch!r} in its metadata; "
                f"pass --arch NAME (known: {', '.join(model_names())})"
            )
        info = get_model_info(hints.arch)

    num_classes = hints.num_classes
    if state is not None:
        if info is None:
            raise SmoothInvError(
                f"{path.name} holds a state_dict, which needs --arch NAME; known: "
                f"{', '.join(model_names())}{_arch_hint(state)}"
            )
        if num_classes is None:
            num_classes = _infer_num_classes(state, info.head, info.num_classes)
        module = info.builder(num_classes)
        _load_state(module, state, info.name, path)
    assert module is not None

    channels = hints.channels or (info.channels if info else None)
    if (hints.mean is None) != (hints.std is None):
        raise SmoothInvError("give both --mean and --std (one value per channel), or neither")
    if hints.mean is not None and hints.std is not None:
        if channels is not None and len(hints.mean) not in (1, channels):
            raise SmoothInvError(
                f"--mean/--std have {len(hints.mean)} values but the model takes {channels} "
                "channels; give one value per channel"
            )
        module = Normalize(module, hints.mean, hints.std)

    return LoadedModel(
        module=_finalize(module, torch_device),
        format=fmt,
        arch=info.name if info else None,
        num_classes=num_classes,
        input_size=hints.input_size or (info.input_size if info else None),
        channels=channels,
        mean=hints.mean,
        std=hints.std,
    )


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    input_size: tuple[int, int],
    channels: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``model``'s state_dict (unwrapping ``Normalize``) as safetensors, atomically.

    The metadata lets ``load_model`` rebuild the model with no flags. The file is written
    to a temporary name in the same directory and then renamed over ``path``.
    """
    path = Path(path)
    info = get_model_info(arch)
    num_classes = _check_positive_int(num_classes, "num_classes")
    input_size = _check_input_size(input_size, "input_size")
    channels = _check_positive_int(channels, "channels")
    if not path.parent.is_dir():
        raise SmoothInvError(f"cannot save to {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise SmoothInvError(f"cannot save to {path}: it is a directory; give a file name")
    if isinstance(model, Normalize):
        if mean is None and std is None:
            mean, std = model.mean_values, model.std_values
        model = model.model

    metadata = {
        "arch": info.name,
        "num_classes": str(num_classes),
        "input_size": f"{input_size[0]},{input_size[1]}",
        "channels": str(channels),
    }
    if (mean is None) != (std is None):
        raise SmoothInvError("give both mean and std, or neither")
    if mean is not None and std is not None:
        metadata["mean"] = ",".join(repr(v) for v in _stat_tuple("mean", mean))
        metadata["std"] = ",".join(repr(v) for v in _stat_tuple("std", std))
    for key, value in (extra_metadata or {}).items():
        if key in metadata:
            raise SmoothInvError(f"extra_metadata may not set {key!r}; pass it as an argument")
        metadata[str(key)] = str(value)

    # Copies, so tensors that share storage (tied weights, views) save cleanly.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp_name, metadata=metadata)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def probe_model(
    module: nn.Module,
    *,
    channels: int,
    input_size: tuple[int, int],
    device: str | torch.device = "cpu",
) -> int:
    """Run ``module`` on zeros [2, channels, H, W]; return the number of classes K.

    The output must be a finite [2, K] tensor with K >= 2.
    """
    channels = _check_positive_int(channels, "--channels")
    height, width = _check_input_size(input_size, "--input-size")
    shape = f"2x{channels}x{height}x{width}"
    x = torch.zeros(2, channels, height, width, device=_parse_device(device))
    try:
        with torch.no_grad():
            out = module(x)
    except SmoothInvError:
        raise
    except Exception as exc:  # the model is arbitrary code: report any failure as one line
        raise SmoothInvError(
            f"model failed on a {shape} input: {_one_line(exc)}; check --input-size/--channels"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise SmoothInvError(
            f"model returned {type(out).__name__} for a {shape} input; "
            "expected a logits tensor [batch, num_classes]"
        )
    if out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < 2:
        raise SmoothInvError(
            f"model output has shape {list(out.shape)} for a {shape} input; "
            "expected [batch, num_classes] with num_classes >= 2"
        )
    if not out.is_floating_point():
        raise SmoothInvError(f"model returned {out.dtype} outputs; expected float logits")
    if not torch.isfinite(out).all():
        raise SmoothInvError(
            f"model returned NaN/inf on a {shape} input; the weights may be corrupt "
            "or --mean/--std wrong"
        )
    return int(out.shape[1])


# ----------------------------------------------------------------------------- formats


def detect_format(path: Path) -> str:
    """"safetensors", "torchscript", "torch_zip" or "pickle", judged by the file's bytes."""
    if not path.exists():
        raise SmoothInvError(f"model file not found: {path}")
    if path.is_dir():
        raise SmoothInvError(f"{path} is a directory; pass the model file itself")
    size = path.stat().st_size
    if size == 0:
        raise SmoothInvError(f"{path} is empty; re-download or re-save the model")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise SmoothInvError(f"cannot read {path}: {exc.strerror or exc}") from None

    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if len(head) == 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len <= _MAX_SAFETENSORS_HEADER:
            if header_len > size - 8:
                raise SmoothInvError(
                    f"{path} is a truncated safetensors file; re-download or re-save it"
                )
            return SAFETENSORS
    if head[0] == 0x80:  # pickle PROTO opcode, as written by legacy torch.save
        return PICKLE
    raise SmoothInvError(
        f"{path} is not a recognised model file; expected safetensors, a torch.save "
        "checkpoint (.pt/.pth) or a TorchScript archive"
    )


def _zip_kind(path: Path) -> str:
    """Tell a TorchScript archive from a torch.save zip by the member names."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise SmoothInvError(
            f"{path} is a corrupt or truncated zip archive; re-download or re-save it"
        ) from None
    inner = [name.split("/", 1)[1] if "/" in name else name for name in names]
    if any(n == "constants.pkl" or n.startswith("code/") for n in inner):
        return TORCHSCRIPT
    if "data.pkl" in inner:
        return TORCH_ZIP
    raise SmoothInvError(
        f"{path} is a zip archive but not a PyTorch checkpoint or TorchScript model"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file (no code runs)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise SmoothInvError(
            f"{path} is a corrupt safetensors file ({_one_line(exc)}); re-download or re-save it"
        ) from None
    if not state:
        raise SmoothInvError(f"{path} holds no tensors; is it the right file?")
    return state, metadata


def _read_torchscript(path: Path) -> nn.Module:
    """A TorchScript archive; its code is TorchScript, which cannot call Python."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise SmoothInvError(
            f"{path} looks like TorchScript but failed to load ({_one_line(exc)}); "
            "re-export it with torch.jit.save"
        ) from None


def _torch_load(path: Path, kind: str, unsafe_pickle: bool) -> object:
    """``torch.load`` with weights_only=True; weights_only=False only when opted in."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's pickle-protocol warnings
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        safe_error = exc
    if not unsafe_pickle:
        raise SmoothInvError(_refusal_message(path, kind, safe_error))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SmoothInvError(
            f"unpickling {path.name} failed: {_one_line(exc)}; the classes it needs may not "
            "be importable here; re-save it as a state_dict or safetensors"
        ) from None
    if not isinstance(obj, (nn.Module, Mapping)):
        raise SmoothInvError(
            f"{path.name} unpickled to a {type(obj).__name__}, not a torch nn.Module or "
            "state_dict"
        )
    return obj


def _refusal_message(path: Path, kind: str, exc: BaseException) -> str:
    """Why a weights_only load failed: a pickled Python object, or a bad file."""
    if not isinstance(exc, pickle.UnpicklingError):
        return _corrupt_message(path, exc)
    name = _refused_global(str(exc)) or _first_unsafe_global(path, kind)
    if name is not None:
        return (
            f"{path.name} holds a pickled Python object ({name}); loading it would execute "
            "code from the file: pass --unsafe-pickle only if you trust it, or re-save it as "
            "a state_dict or safetensors"
        )
    return (
        f"{path} cannot be read as plain weights ({_weights_only_reason(str(exc))}); it is "
        "corrupt or pickled in a way safe loading does not support: re-save it as "
        "safetensors, or pass --unsafe-pickle only if you trust it"
    )


def _refused_global(message: str) -> str | None:
    """The Python global that weights_only refused, if that is why loading failed."""
    for line in message.splitlines():
        marker = "GLOBAL "
        if marker in line:
            return line.split(marker, 1)[1].split(" ", 1)[0]
    return None


def _weights_only_reason(message: str) -> str:
    """The unpickler's own complaint inside torch's long weights_only message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else line)
    return lines[0] if lines else "unreadable pickle"


def _first_unsafe_global(path: Path, kind: str) -> str | None:
    """First import in the file's pickle(s) outside torch's weights_only allowlist.

    Reads opcodes with ``pickletools`` only; nothing from the file is executed.
    """
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # private torch API; without it, report any import
        allowed = set()
    try:
        if kind == TORCH_ZIP:
            with zipfile.ZipFile(path) as archive:
                member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                stream: BinaryIO = io.BytesIO(archive.read(member))
        else:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        with stream:
            strings: list[str] = []
            for _ in range(8):  # legacy torch.save files hold several pickles in a row
                for opcode, arg, _pos in pickletools.genops(stream):
                    name = None
                    if opcode.name in ("GLOBAL", "INST"):
                        name = str(arg).replace(" ", ".")
                    elif opcode.name == "STACK_GLOBAL":
                        name = ".".join(strings[-2:]) if len(strings) >= 2 else "a Python object"
                    elif isinstance(arg, str):
                        strings.append(arg)
                    if name is not None and name not in allowed:
                        return name
    except Exception:  # not (or no longer) a valid pickle: stop scanning
        pass
    return None


def _corrupt_message(path: Path, exc: BaseException) -> str:
    return (
        f"{path} is corrupt, truncated or not a PyTorch checkpoint ({_one_line(exc)}); "
        "re-download or re-save it"
    )


# ----------------------------------------------------------------------------- state dicts


def _unwrap_containers(obj: object) -> object:
    """Descend into ``{"state_dict": ...}``-style checkpoint dicts (a few levels)."""
    for _ in range(4):
        if not isinstance(obj, Mapping) or _all_tensors(obj):
            return obj
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, (Mapping, nn.Module)):
                obj = inner
                break
        else:
            return obj
    return obj


def _all_tensors(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} dict with any DataParallel ``module.`` prefix removed."""
    if not isinstance(obj, Mapping):
        raise SmoothInvError(
            f"{path.name} holds a {type(obj).__name__}, not a state_dict or model"
        )
    if not _all_tensors(obj):
        keys = ", ".join(str(k) for k in list(obj)[:6])
        raise SmoothInvError(
            f"{path.name} holds a dict that is not a state_dict (keys: {keys}); save "
            "model.state_dict() or nest it under 'state_dict'"
        )
    state = {str(k): v for k, v in obj.items()}
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _infer_num_classes(state: Mapping[str, torch.Tensor], head: str, default: int) -> int:
    """Rows of the head weight [num_classes, features], else the arch's default."""
    weight = state.get(head)
    if isinstance(weight, torch.Tensor) and weight.dim() >= 1:
        return int(weight.shape[0])
    return default


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], arch: str, path: Path) -> None:
    """``load_state_dict(strict=True)``, with mismatches explained in one line."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    # Old checkpoints lack BatchNorm's num_batches_tracked; torch fills it in.
    missing = [
        k for k in expected if k not in state and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise SmoothInvError(
            f"{path.name} does not match --arch {arch}: {'; '.join(parts)}; "
            f"{_arch_advice(state, arch)}"
        )
    info = get_model_info(arch)
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != shape:
            got = list(state[key].shape)
            if key == info.head:
                raise SmoothInvError(
                    f"{path.name} has {got[0]} classes ({key} is {got}) but {shape[0]} were "
                    f"expected (--num-classes or the file's metadata); pass --num-classes {got[0]}"
                )
            raise SmoothInvError(
                f"{path.name} does not match --arch {arch}: {key} is {got} in the file but "
                f"{list(shape)} in {arch}; {_arch_advice(state, arch)}"
            )
    try:
        module.load_state_dict(state, strict=True)
    except Exception as exc:
        raise SmoothInvError(
            f"{path.name} does not fit --arch {arch}: {_one_line(exc)}"
        ) from None


def _few(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _arch_advice(state: Mapping[str, torch.Tensor], arch: str) -> str:
    matches = [name for name in _matching_archs(state) if name != arch]
    if matches:
        return f"it looks like --arch {matches[0]}"
    return f"check --arch (known: {', '.join(model_names())})"


def _arch_hint(state: Mapping[str, torch.Tensor]) -> str:
    matches = _matching_archs(state)
    return f" (it looks like {matches[0]})" if matches else ""


def _matching_archs(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Registered archs whose keys and shapes (head aside) equal the state_dict's."""
    given = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    matches = []
    for info in list_models():
        expected = _meta_shapes(info.name)
        if set(expected) != set(given):
            continue
        head_prefix = info.head.rsplit(".", 1)[0] + "."
        if all(k.startswith(head_prefix) or expected[k] == given[k] for k in expected):
            matches.append(info.name)
    return matches


_META_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {}


def _meta_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of arch ``name``, built on the meta device (no memory, no init cost)."""
    if name not in _META_SHAPES:
        info = get_model_info(name)
        with torch.device("meta"):
            module = info.builder(info.num_classes)
        _META_SHAPES[name] = {
            k: tuple(v.shape)
            for k, v in module.state_dict().items()
            if not k.endswith("num_batches_tracked")
        }
    return _META_SHAPES[name]


# ----------------------------------------------------------------------------- metadata


def _parse_metadata(raw: Mapping[str, str], path: Path, given: Hints) -> Hints:
    """Typed safetensors metadata. Keys already ``given`` as arguments are not parsed,
    so a bad stored value can be overridden; unknown keys are ignored."""
    parsed: dict[str, object] = {}
    for key in METADATA_KEYS:
        value = raw.get(key)
        if getattr(given, key) is not None or value is None or value.strip() == "":
            continue
        try:
            if key == "arch":
                parsed[key] = value.strip()
            elif key in ("num_classes", "channels"):
                parsed[key] = _check_positive_int(int(value), key)
            elif key == "input_size":
                parts = [int(p) for p in value.replace("x", ",").split(",")]
                parsed[key] = _check_input_size(parts * 2 if len(parts) == 1 else parts, key)
            else:
                parsed[key] = _stat_tuple(key, value.split(","))
        except (ValueError, SmoothInvError):
            flag = "--" + key.replace("_", "-")
            raise SmoothInvError(
                f"{path.name} has invalid metadata {key}={value!r}; pass {flag} to override "
                "it, or re-save the file"
            ) from None
    return Hints(**parsed)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- helpers


def _finalize(module: nn.Module, device: torch.device) -> nn.Module:
    """Eval mode, frozen parameters (we need only input gradients), on ``device``."""
    try:
        module = module.to(device)
    except Exception as exc:
        raise SmoothInvError(f"cannot move the model to {device}: {_one_line(exc)}") from None
    module.eval()
    for param in module.parameters():  # ScriptModules lack requires_grad_()
        param.requires_grad_(False)
    return module


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SmoothInvError(f"invalid device {device!r}; use e.g. cpu, cuda or cuda:0") from None


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SmoothInvError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_input_size(value: object, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise SmoothInvError(f"{name} must be H,W (two positive integers), got {value!r}")
    height, width = value
    _check_positive_int(height, name)
    _check_positive_int(width, name)
    return (int(height), int(width))


def _stat_tuple(name: str, values: Sequence[float]) -> tuple[float, ...]:
    """Mean/std values as a non-empty tuple of finite floats."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise SmoothInvError(
            f"--{name} must be numbers, one per channel, got {values!r}"
        ) from None
    if not out or not all(v == v and abs(v) != float("inf") for v in out):
        raise SmoothInvError(f"--{name} must be finite numbers, one per channel, got {values!r}")
    return out


def _one_line(exc: BaseException) -> str:
    """The informative line of an exception message (TorchScript puts it last)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith(_TORCHSCRIPT_FAILED):
        return lines[-1]
    return lines[0]
