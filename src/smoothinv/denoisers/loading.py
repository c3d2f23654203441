"""Opening a diffusers-format DDPM/DDIM folder as a one-shot denoiser, without running its code.

Layouts read: a model folder (config.json of a `UNet2DModel`, its weights, and
scheduler_config.json beside them, as the public CIFAR-10 DDPM ships) or a pipeline folder
(model_index.json, unet/, scheduler/). Weights are read from safetensors
(`diffusion_pytorch_model[.fp16].safetensors`); a pickled `diffusion_pytorch_model.bin` is read
only with `trust_code` (and then still as plain tensors: pickle parsing itself is attack surface).
The configs are JSON, checked for size and for the UNet's dimensions before anything is built.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import SmoothInvError, param
from ..files import sha256_file
from ..models.formats import read_safetensors, read_torch_save, refuse_code
from .export import METADATA, WEIGHTS
from .one_shot import DenoiserInfo, OneShotDenoiser
from .registry import DENOISERS
from .schedule import NoiseSchedule
from .unet import diffusers

SAFE_WEIGHTS = (WEIGHTS, "diffusion_pytorch_model.fp16.safetensors")
PICKLED_WEIGHTS = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")
_MAX_CONFIG_BYTES = 1 << 20
# Bounds on a config's UNet before it is built (a crafted config must not allocate without limit).
_MAX_WIDTH, _MAX_LEVELS, _MAX_LAYERS, _MAX_SIZE, _MAX_PARAMETERS = 4096, 8, 8, 1024, 2_000_000_000
_MAX_CONFIG_INTEGER = 100_000  # time embedding sizes, head dims, group counts: far below this in any real UNet


@dataclass(frozen=True)
class DenoiserRef:
    """A denoiser as a run's settings hold it: what the user named, the folder it resolved to,
    its weights' SHA-256 (a checkpoint made with other weights does not resume) and whether
    code-carrying weights were allowed. JSON-ready; `open_denoiser` turns it into the network."""

    name: str
    path: str
    sha256: str
    trust_code: bool = False

    @classmethod
    def from_value(cls, value: object) -> "DenoiserRef":
        """A DenoiserRef, or the dict a settings file stored it as."""
        if isinstance(value, DenoiserRef):
            return value
        if isinstance(value, dict) and set(value) == {"name", "path", "sha256", "trust_code"}:
            return cls(str(value["name"]), str(value["path"]), str(value["sha256"]), bool(value["trust_code"]))
        raise SmoothInvError(f"denoiser must be a name or folder resolved with resolve_denoiser (got {value!r:.80})")


def resolve_denoiser(text: str | Path, *, trust_code: bool = False) -> DenoiserRef:
    """A registered denoiser's name, or a diffusers-format folder → its DenoiserRef (the folder
    and weights are checked now, so a bad --denoiser fails before any long work)."""
    text = str(text)
    folder = DENOISERS.get(text).folder if text in DENOISERS else Path(text)
    if not folder.exists():
        raise SmoothInvError(f"{param('denoiser')} {text!r} is neither a known denoiser "
                             f"({', '.join(DENOISERS.names())}) nor an existing folder")
    layout = _Layout.find(folder)
    weights = layout.weights(trust_code)
    name = DENOISERS.canonical(text) if text in DENOISERS else folder.resolve().name
    return DenoiserRef(name, str(folder), sha256_file(weights), trust_code)


def load_denoiser(text: str | Path, *, trust_code: bool = False) -> OneShotDenoiser:
    """The one-shot denoiser named `text` (registered name or diffusers-format folder)."""
    return open_denoiser(resolve_denoiser(text, trust_code=trust_code))


@functools.lru_cache(maxsize=4)
def open_denoiser(ref: DenoiserRef) -> OneShotDenoiser:
    """The network `ref` points at, on the CPU, in eval mode with frozen parameters. Cached: the
    methods of one scan share one copy. Refuses weights whose hash is not ref.sha256."""
    layout = _Layout.find(Path(ref.path))
    weights = layout.weights(ref.trust_code)
    if sha256_file(weights) != ref.sha256:
        raise SmoothInvError(f"denoiser {ref.name}: {weights} changed since it was chosen (SHA-256 differs); "
                             "rerun to use the new weights")
    unet_config = _read_json(layout.unet / "config.json")
    scheduler_config = _read_json(layout.scheduler_config)
    network = _build_unet(unet_config, layout.unet)
    state = _read_weights(weights, ref.trust_code)
    _load_state(network, state, weights)
    schedule = _schedule(scheduler_config, layout.scheduler_config)
    meta = _read_metadata(layout.unet / METADATA)
    size = unet_config.get("sample_size", 32)
    height, width = (size[0], size[-1]) if isinstance(size, (list, tuple)) else (size, size)
    info = DenoiserInfo(name=ref.name, sha256=ref.sha256, channels=int(unet_config.get("in_channels", 3)),
                        size=(int(height), int(width)), prediction_type=str(scheduler_config.get("prediction_type", "epsilon")),
                        trained_sigma=meta)
    return OneShotDenoiser(network, schedule, info)


@dataclass(frozen=True)
class _Layout:
    """Where a folder keeps the UNet (its config and weights) and the scheduler config."""

    unet: Path
    scheduler_config: Path

    @classmethod
    def find(cls, folder: Path) -> "_Layout":
        if not folder.is_dir():
            raise SmoothInvError(f"denoiser {folder} is not a folder; pass a diffusers-format DDPM folder "
                                 "(config.json, diffusion_pytorch_model.safetensors, scheduler_config.json)")
        if (folder / "unet" / "config.json").is_file():
            layout = cls(folder / "unet", folder / "scheduler" / "scheduler_config.json")
        else:
            layout = cls(folder, folder / "scheduler_config.json")
        for needed in (layout.unet / "config.json", layout.scheduler_config):
            if not needed.is_file():
                raise SmoothInvError(f"denoiser folder {folder} has no {needed.relative_to(folder)}; a diffusers DDPM "
                                     "folder holds config.json, its weights and scheduler_config.json")
        return layout

    def weights(self, trust_code: bool) -> Path:
        for name in SAFE_WEIGHTS:
            if (self.unet / name).is_file():
                return self.unet / name
        for name in PICKLED_WEIGHTS:
            if (self.unet / name).is_file():
                if not trust_code:
                    raise refuse_code(self.unet / name, "a pickled weights file")
                return self.unet / name
        if (self.unet / "diffusion_pytorch_model.safetensors.index.json").is_file():
            raise SmoothInvError(f"{self.unet} holds sharded weights; merge them into one "
                                 "diffusion_pytorch_model.safetensors")
        raise SmoothInvError(f"{self.unet} has no weights ({', '.join(SAFE_WEIGHTS)})")


def _read_json(path: Path) -> dict[str, Any]:
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise SmoothInvError(f"{path} is larger than a diffusers config can be ({_MAX_CONFIG_BYTES} bytes)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SmoothInvError(f"{path} is not valid JSON ({exc}); re-download the denoiser") from None
    if not isinstance(value, dict):
        raise SmoothInvError(f"{path} must hold a JSON object")
    return value


def _build_unet(config: dict[str, Any], folder: Path) -> torch.nn.Module:
    kind = config.get("_class_name", "UNet2DModel")
    if kind != "UNet2DModel":
        raise SmoothInvError(f"{folder}/config.json describes a {kind!r}; a one-shot denoiser needs an "
                             "unconditional UNet2DModel (a pixel-space DDPM/DDIM)")
    _check_dimensions(config, folder)
    try:
        unet = diffusers().UNet2DModel.from_config(config)
    except SmoothInvError:
        raise
    except Exception as exc:
        raise SmoothInvError(f"{folder}/config.json does not describe a buildable UNet2DModel "
                             f"({type(exc).__name__}: {str(exc)[:120]})") from None
    return unet


def _check_dimensions(config: dict[str, Any], folder: Path) -> None:
    largest = max(_integers(config), default=0)
    if largest > _MAX_CONFIG_INTEGER:
        raise SmoothInvError(f"{folder}/config.json holds the number {largest}, larger than any UNet setting can be "
                             f"({_MAX_CONFIG_INTEGER}); the config is corrupt or crafted")
    widths = config.get("block_out_channels", (224, 448, 672, 896))
    layers = config.get("layers_per_block", 2)
    size = config.get("sample_size", 32)
    sizes = size if isinstance(size, (list, tuple)) else [size]
    channels = [config.get("in_channels", 3), config.get("out_channels", 3)]
    numbers = [*widths, layers, *sizes, *channels] if isinstance(widths, (list, tuple)) else None
    if (numbers is None or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in numbers)
            or len(widths) > _MAX_LEVELS or max(widths) > _MAX_WIDTH or layers > _MAX_LAYERS
            or max(sizes) > _MAX_SIZE or max(channels) > 4):
        raise SmoothInvError(f"{folder}/config.json has UNet dimensions out of range (block_out_channels ≤ "
                             f"{_MAX_WIDTH} over ≤ {_MAX_LEVELS} levels, layers_per_block ≤ {_MAX_LAYERS}, "
                             f"sample_size ≤ {_MAX_SIZE}, ≤ 4 channels)")
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise SmoothInvError(f"{folder}/config.json: in_channels and out_channels differ; not a denoising DDPM")
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise SmoothInvError(f"{folder}/config.json describes a class-conditional UNet; a one-shot denoiser "
                             "needs an unconditional one")
    rough = sum(9 * w * w * (2 * layers + 3) for w in widths)
    if rough > _MAX_PARAMETERS:
        raise SmoothInvError(f"{folder}/config.json describes a UNet of ~{rough:,} parameters, too large to load")


def _integers(value: Any) -> list[int]:
    """Every integer in a JSON value (nested lists and objects included)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [abs(value)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [n for item in value for n in _integers(item)]
    return []


def _read_weights(path: Path, trust_code: bool) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        state, _ = read_safetensors(path)
    else:
        if not trust_code:
            raise refuse_code(path, "a pickled weights file")
        state = read_torch_save(path, "state_dict", trust_code=False)  # type: ignore[assignment]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise SmoothInvError(f"{path} is not a state_dict of tensors")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise SmoothInvError(f"{path}: tensor {key!r} holds NaN or infinite values; the weights are corrupt")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def _load_state(network: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(shapes)} of another shape (e.g. {shapes[0]})" if shapes else ""]
        raise SmoothInvError(f"{path} does not match its config.json: "
                             f"{'; '.join(p for p in parts if p)} tensors")
    network.load_state_dict(state)


def _schedule(config: dict[str, Any], path: Path) -> NoiseSchedule:
    """ᾱ_t as diffusers' DDPM scheduler computes it from the config's training schedule (the
    same keys every diffusers noise scheduler uses for training: num_train_timesteps, beta_*)."""
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "rescale_betas_zero_snr", "prediction_type")
    steps = config.get("num_train_timesteps", 1000)
    if not isinstance(steps, int) or not 2 <= steps <= 100_000:
        raise SmoothInvError(f"{path}: num_train_timesteps must be an integer in [2, 100000]")
    try:
        scheduler = diffusers().DDPMScheduler.from_config({k: config[k] for k in keys if k in config})
        return NoiseSchedule(scheduler.alphas_cumprod.double())
    except Exception as exc:
        raise SmoothInvError(f"{path} does not describe a noise schedule diffusers knows "
                             f"({type(exc).__name__}: {str(exc)[:120]})") from None


def _read_metadata(path: Path) -> tuple[float, float] | None:
    """The σ range our own denoisers were trained on (smoothinv.json), if the folder has one."""
    if not path.is_file():
        return None
    trained = _read_json(path).get("trained_sigma")
    if (isinstance(trained, list) and len(trained) == 2
            and all(isinstance(v, (int, float)) and v > 0 for v in trained)):
        return float(trained[0]), float(trained[1])
    return None
