"""Recognise a model file's format by its bytes and read it without running its code.

* safetensors: 8-byte little-endian header length, then a JSON header. Tensors only,
  plus string metadata.
* zip archive: TorchScript when it has ``constants.pkl`` or a ``code/`` folder,
  otherwise a ``torch.save`` file.
* legacy ``torch.save`` pickle (starts with a pickle protocol byte).
* ONNX: a protobuf, which has no magic number. A file is ONNX when its top-level
  protobuf fields are those of an ONNX ModelProto with a graph (``onnx_problem``, a
  bounded walk that reads only field keys); it is converted by the ``onnx`` subpackage.

``torch.save`` files are read with ``weights_only=True``, which refuses pickled Python
objects; when it does, the error names the offending import, found by reading pickle
opcodes (nothing executed). Formats that carry code, a whole pickled model
(``weights_only=False``) and TorchScript (``torch.jit.load``, whose ``__setstate__`` runs
during loading and can call ops such as ``torch.from_file(..., shared=True)`` that write
files), are read only when the caller passes ``trust_code``.
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

from smoothinv.errors import SmoothInvError, param
from smoothinv.models.messages import one_line

# Format names: LoadedModel.format is one of SAFETENSORS, STATE_DICT, TORCHSCRIPT, PICKLE.
SAFETENSORS = "safetensors"
STATE_DICT = "state_dict"
TORCHSCRIPT = "torchscript"
PICKLE = "pickle"
ONNX = "onnx"
TORCH_ZIP = "torch_zip"  # a torch.save zip archive (detect_format only)
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
# How refusals name the opt-in for code-carrying formats and the formats that need none.
TRUST_CODE_OPT_IN = param("trust_code") + "=True"
SAFE_FORMATS = f"safetensors (a state_dict plus {param('arch')}) or ONNX"


def detect_format(path: Path) -> str:
    """"safetensors", "onnx", "torchscript", "torch_zip" or "pickle", judged by the file's bytes."""
    if not path.exists():
        raise SmoothInvError(f"model file not found: {path}")
    if path.is_dir():
        raise SmoothInvError(f"{path} is a directory; pass the model file itself")
    if not path.is_file():  # a FIFO or device would block or never end
        raise SmoothInvError(f"{path} is not a regular file (a pipe or device?); pass the model file itself")
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
    onnx_named = path.suffix.lower() == ".onnx"
    if onnx_named or head[0] == _ONNX_FIRST_BYTE:
        problem = onnx_problem(path, size)
        if problem is None:
            return ONNX
        if onnx_named and head[0] == _ONNX_FIRST_BYTE:
            raise SmoothInvError(
                f"{path} is not a valid ONNX model ({problem}); it may be truncated: "
                "re-download or re-export it"
            )
    raise SmoothInvError(
        f"{path.name} is not a recognised model file{_despite(path)}: it is "
        f"{describe_content(head, path)}; expected safetensors, ONNX, a torch.save checkpoint "
        "(.pt/.pth) or TorchScript"
    )


# Top-level fields of onnx.ModelProto: number -> protobuf wire type (0 varint, 2 bytes).
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}
_ONNX_FIRST_BYTE = 0x08  # field 1 (ir_version), varint: what every exporter writes first
_MAX_TOP_LEVEL_FIELDS = 100_000


def onnx_problem(path: Path, size: int) -> str | None:
    """None when the file's top-level protobuf fields are an ONNX ModelProto's with a graph.

    Reads only field keys and lengths (it seeks over the contents), so it is cheap and
    bounded for any file; the full parse happens in the ``onnx`` subpackage.
    """
    seen: set[int] = set()
    try:
        with open(path, "rb") as f:
            for _ in range(_MAX_TOP_LEVEL_FIELDS):
                if f.tell() >= size:
                    break
                key = _varint(f)
                number, wire = key >> 3, key & 7
                if _ONNX_FIELDS.get(number) != wire:
                    return f"unexpected protobuf field {number} (wire type {wire}) at byte {f.tell()}"
                length = _varint(f)
                if wire == 2:
                    if length > size - f.tell():
                        return f"field {number} runs past the end of the file"
                    f.seek(length, io.SEEK_CUR)
                seen.add(number)
            else:
                return "too many top-level fields"
    except (OSError, ValueError) as exc:
        return one_line(exc)
    if 1 not in seen or 7 not in seen:
        return "no ir_version or no graph"
    return None


def _varint(f: BinaryIO) -> int:
    """One protobuf varint (at most 10 bytes)."""
    value = 0
    for shift in range(0, 70, 7):
        byte = f.read(1)
        if not byte:
            raise ValueError("the file ends inside a field")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    raise ValueError("malformed varint")


# Leading bytes of files people pass by mistake, so the error can say what the file is.
_SIGNATURES = (
    (b"\x1f\x8b", "a gzip archive"),
    (b"BZh", "a bzip2 archive"),
    (b"\xfd7zXZ", "an xz archive"),
    (b"7z\xbc\xaf", "a 7-zip archive"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x89HDF", "an HDF5 file (Keras/TensorFlow weights?)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x7fELF", "an executable"),
    (b"version https://git-lfs", "a Git LFS pointer, not the file itself (run git lfs pull)"),
)


def describe_content(head: bytes, path: Path) -> str:
    """What a file that is not a model looks like, from its first bytes, e.g. "a PNG image"."""
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    try:
        with open(path, "rb") as f:
            start = f.read(512)
        text = start.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return "an unrecognised binary file"
    if text.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the file itself (run git lfs pull)"
    lowered = text.lstrip().lower()
    if lowered.startswith(("<!doctype html", "<html")):
        return "an HTML page (the download saved a web page instead of the file?)"
    return "a text file"


def _despite(path: Path) -> str:
    """' despite its .safetensors extension' when the name promises a model format."""
    suffix = path.suffix.lower()
    return f" despite its {suffix} extension" if suffix in _MODEL_SUFFIXES else ""


_MODEL_SUFFIXES = (".safetensors", ".onnx", ".pt", ".pth", ".bin", ".ckpt", ".pkl", ".model", ".tar")


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
        f"{path.name} is {_describe_zip(names)}, not a PyTorch checkpoint{_despite(path)}; "
        "pass the model file itself (safetensors, ONNX or a torch.save checkpoint)"
    )


def _describe_zip(names: list[str]) -> str:
    """What a zip that is not a PyTorch file holds, e.g. "a zip archive holding model.safetensors"."""
    if names and all(n.endswith(".npy") for n in names):
        return "a NumPy .npz archive"
    if "config.json" in names and any(n.endswith(".h5") for n in names):
        return "a Keras .keras archive"
    if not names:
        return "an empty zip archive"
    shown = ", ".join(n[:60] for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"a zip archive holding {shown}"


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


def refuse_code(path: Path, what: str) -> SmoothInvError:
    """The one-line refusal for a format that carries code, naming the opt-in and the safe formats."""
    return SmoothInvError(
        f"{path.name} is {what}, which runs code from the file when loaded; pass "
        f"{TRUST_CODE_OPT_IN} only if you trust it, or export the model as "
        f"{SAFE_FORMATS} (see the README)"
    )


def read_torchscript(path: Path, trust_code: bool) -> nn.Module:
    """A TorchScript archive, only with ``trust_code``: its code runs inside torch.jit.load.

    TorchScript cannot call Python, but its ops can read and write files
    (``torch.from_file(name, shared=True)``), and ``__setstate__`` runs while loading.
    """
    if not trust_code:
        raise refuse_code(path, "a TorchScript archive")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise SmoothInvError(
            f"{path} looks like TorchScript but failed to load ({one_line(exc)}); "
            "re-export it with torch.jit.save"
        ) from None


def read_torch_save(path: Path, kind: str, trust_code: bool) -> object:
    """``torch.load`` with weights_only=True; weights_only=False only with ``trust_code``.

    torch.load is given an open file, not the path: given a path ending in .safetensors
    it would read the file as safetensors whatever its bytes are.
    """
    try:
        with warnings.catch_warnings(), open(path, "rb") as f:
            warnings.simplefilter("ignore")  # e.g. torch's pickle-protocol warnings
            return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:
        safe_error = exc
    if not trust_code:
        raise SmoothInvError(_refusal_message(path, kind, safe_error))
    try:
        with open(path, "rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=False)
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
            f"code from the file: pass {TRUST_CODE_OPT_IN} only if you trust it, or re-save it as "
            f"{SAFE_FORMATS}"
        )
    return (
        f"{path} cannot be read as plain weights ({_weights_only_reason(str(exc))}); it is "
        "corrupt or pickled in a way safe loading does not support: re-save it as "
        f"safetensors, or pass {TRUST_CODE_OPT_IN} only if you trust it"
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
