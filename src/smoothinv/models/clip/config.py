"""The shape of a CLIP model: its image tower, its text tower and the embedding they share.

Everything here is what a state_dict fixes (widths, depths, patch size, resolution, vocabulary)
plus the one thing it cannot show: the MLP activation. OpenAI's models and open_clip's
``*-quickgelu`` configs use QuickGELU, x * sigmoid(1.702 x); open_clip's other configs use
``nn.GELU``. Attention heads are width // 64 in every tower, as OpenAI's models have them (the
ResNet's attention pool works on width * 32 features, so it has width // 2 heads).

Each config checks its own numbers on construction, so a config built from a hostile file's
shapes fails with one line before any layer is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

from smoothinv.errors import SmoothInvError

HEAD_WIDTH = 64
"""Channels per attention head in every CLIP tower (OpenAI's models, open_clip's default)."""
MAX_WIDTH = 16_384
MAX_LAYERS = 256
MAX_IMAGE_SIZE = 4096
MAX_CONTEXT = 4096
MAX_VOCAB = 1_000_000


def _check(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SmoothInvError(f"CLIP {name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _check_heads(width: int, what: str) -> int:
    """width // 64 heads, each width / heads channels wide (so heads must divide width)."""
    heads = width // HEAD_WIDTH
    if heads < 1 or width % heads:
        raise SmoothInvError(
            f"CLIP {what} width {width} does not split into width // {HEAD_WIDTH} = {heads} attention heads"
        )
    return heads


@dataclass(frozen=True)
class VitConfig:
    """A Vision Transformer image tower: ``image_size``² RGB images cut into ``patch_size``²
    patches, ``layers`` residual attention blocks of ``width`` channels, the class token
    projected to ``embed_dim``."""

    width: int
    layers: int
    patch_size: int
    image_size: int
    embed_dim: int
    quick_gelu: bool = True

    def __post_init__(self) -> None:
        _check(self.width, "vision width", 1, MAX_WIDTH)
        _check(self.layers, "vision layers", 1, MAX_LAYERS)
        _check(self.patch_size, "patch size", 1, MAX_IMAGE_SIZE)
        _check(self.image_size, "image size", 1, MAX_IMAGE_SIZE)
        _check(self.embed_dim, "embedding size", 1, MAX_WIDTH)
        if self.image_size % self.patch_size:
            raise SmoothInvError(
                f"CLIP image size {self.image_size} is not a whole number of {self.patch_size}-pixel patches"
            )
        _check_heads(self.width, "vision")

    @property
    def heads(self) -> int:
        return self.width // HEAD_WIDTH

    @property
    def grid(self) -> int:
        """Patches per side: the tower sees grid² patch tokens plus the class token."""
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class ResNetConfig:
    """OpenAI's ModifiedResNet image tower: a 3-conv stem of ``width`` channels, four stages of
    ``layers`` Bottleneck blocks (widths width·1, 2, 4, 8, times 4 out), an attention pool over the
    width·32 features of an ``image_size`` / 32 grid, projected to ``embed_dim``."""

    width: int
    layers: tuple[int, int, int, int]
    image_size: int
    embed_dim: int

    def __post_init__(self) -> None:
        _check(self.width, "ResNet width", 2, MAX_WIDTH // 32)
        if self.width % 2:
            raise SmoothInvError(f"CLIP ResNet width must be even (its stem halves it), got {self.width}")
        if not isinstance(self.layers, tuple) or len(self.layers) != 4:
            raise SmoothInvError(f"CLIP ResNet layers must be 4 block counts, got {self.layers!r}")
        for count in self.layers:
            _check(count, "ResNet blocks per stage", 1, MAX_LAYERS)
        _check(self.image_size, "image size", 32, MAX_IMAGE_SIZE)
        if self.image_size % 32:
            raise SmoothInvError(f"CLIP ResNet image size must be a multiple of 32, got {self.image_size}")
        _check(self.embed_dim, "embedding size", 1, MAX_WIDTH)

    @property
    def features(self) -> int:
        """Channels out of the last stage, which the attention pool attends over."""
        return self.width * 32

    @property
    def heads(self) -> int:
        return self.features // HEAD_WIDTH

    @property
    def grid(self) -> int:
        """Side of the last stage's feature map (the stem and three stages each halve it)."""
        return self.image_size // 32


VisionConfig = VitConfig | ResNetConfig


@dataclass(frozen=True)
class TextConfig:
    """The text tower: ``context_length`` token positions over a ``vocab_size`` vocabulary,
    ``layers`` causal residual attention blocks of ``width`` channels, the end-of-text token's
    features projected to ``embed_dim``."""

    width: int
    layers: int
    context_length: int
    vocab_size: int
    embed_dim: int
    quick_gelu: bool = True

    def __post_init__(self) -> None:
        _check(self.width, "text width", 1, MAX_WIDTH)
        _check(self.layers, "text layers", 1, MAX_LAYERS)
        _check(self.context_length, "context length", 2, MAX_CONTEXT)
        _check(self.vocab_size, "vocabulary size", 2, MAX_VOCAB)
        _check(self.embed_dim, "embedding size", 1, MAX_WIDTH)
        _check_heads(self.width, "text")

    @property
    def heads(self) -> int:
        return self.width // HEAD_WIDTH


@dataclass(frozen=True)
class ClipConfig:
    """Both towers; they must project into the same ``embed_dim``."""

    vision: VisionConfig
    text: TextConfig

    def __post_init__(self) -> None:
        if self.vision.embed_dim != self.text.embed_dim:
            raise SmoothInvError(
                f"CLIP image tower embeds into {self.vision.embed_dim} dimensions but the text tower into "
                f"{self.text.embed_dim}; the checkpoint is inconsistent"
            )

    @property
    def embed_dim(self) -> int:
        return self.vision.embed_dim


# Two published layouts, for defaults and tests (OpenAI's clip/model.py build_model numbers).
VIT_B_32 = ClipConfig(
    vision=VitConfig(width=768, layers=12, patch_size=32, image_size=224, embed_dim=512),
    text=TextConfig(width=512, layers=12, context_length=77, vocab_size=49408, embed_dim=512),
)
RN50 = ClipConfig(
    vision=ResNetConfig(width=64, layers=(3, 4, 6, 3), image_size=224, embed_dim=1024),
    text=TextConfig(width=512, layers=12, context_length=77, vocab_size=49408, embed_dim=1024),
)
