"""Recognise a model file's format by its bytes and read it without running its code.

* safetensors: 8-byte little-endian header length, then a JSON header. Tensors only,
  plus string metadata.
* zip archive: TorchScript when it has ``constants.pkl`` or a ``code/`` folder
  (``torch.jit.load``: TorchScript, not Python), otherwise a ``torch.save`` file.
* legacy ``torch.save`` pickle (starts with a pickle protocol byte).

``torch.save`` files are read with ``weights_only=True``, which refuses pickled Python
objects; when it does, the error names the offending import, found by reading pickle
opcodes (nothing executed). ``weights_only=False`` is used only when the caller opts in.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import safe_open
from torch import nn

from smoothinv.errors import SmoothInvError
from smoothinv.models.messages import one_line

# Format names: LoadedModel.format is one of SAFETENSORS, STATE_DICT, TORCHSCRIPT, PICKLE.
SAFETENSORS = "safetensors"
STATE_DICT = "state_dict"
TORCHSCRIPT = "torchscript"
PICKLE = "pickle"
TORCH_ZIP = "torch_zip"  # a torch.save zip archive (detect_format only)
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


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


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file (no code runs)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise SmoothInvError(
            f"{path} is a corrupt safetensors file ({one_line(exc)}); re-download or re-save it"
        ) from None
    if not state:
        raise SmoothInvError(f"{path} holds no tensors; is it the right file?")
    return state, metadata


def read_torchscript(path: Path) -> nn.Module:
    """A TorchScript archive; its code is TorchScript, which cannot call Python."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise SmoothInvError(
            f"{path} looks like TorchScript but failed to load ({one_line(exc)}); "
            "re-export it with torch.jit.save"
        ) from None


def read_torch_save(path: Path, kind: str, unsafe_pickle: bool) -> object:
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
            f"unpickling {path.name} failed: {one_line(exc)}; the classes it needs may not "
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
        f"{path} is corrupt, truncated or not a PyTorch checkpoint ({one_line(exc)}); "
        "re-download or re-save it"
    )
