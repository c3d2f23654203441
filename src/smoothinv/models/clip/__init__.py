"""CLIP in plain torch: both towers under OpenAI's state_dict names, the architecture read from a
checkpoint, CLIP's BPE tokenizer, and a zero-shot classifier that loads like any other model.

Modules: ``config`` (tower shapes), ``attention`` (the residual attention stack), ``vit`` and
``resnet`` (the two image towers), ``text`` (the text tower), ``model`` (CLIPModel),
``inference`` (config from a state_dict, layout checks), ``checkpoint`` (reading a checkpoint
file safely), ``cleaning`` + ``tokenizer`` (text -> token ids), ``zeroshot`` (class embeddings,
ZeroShotClassifier) and ``zeroshot_file`` (its safetensors format and the ``clip-zeroshot``
architecture that ``load_model`` rebuilds it with).

    clip = load_clip("ViT-B-32.safetensors")                    # OpenAI / open_clip weights
    classifier = zeroshot_classifier(clip, ["cat", "dog"], ["a photo of a {}."])
    save_zeroshot_classifier("cats-dogs.safetensors", classifier, class_names=["cat", "dog"])
    load_model("cats-dogs.safetensors").module                  # takes [0, 1] images
"""

from smoothinv.models.clip.checkpoint import clip_from_state, load_clip, read_clip_state
from smoothinv.models.clip.config import RN50, VIT_B_32, ClipConfig, ResNetConfig, TextConfig, VisionConfig, VitConfig
from smoothinv.models.clip.inference import infer_clip_config, infer_text_config, infer_vision_config
from smoothinv.models.clip.model import CLIPModel, image_tower
from smoothinv.models.clip.tokenizer import ClipTokenizer, clip_tokenizer
from smoothinv.models.clip.zeroshot import (
    DEFAULT_TEMPLATES,
    ZeroShotClassifier,
    classifier_from_embeddings,
    text_class_embeddings,
    zeroshot_classifier,
)
from smoothinv.models.clip.zeroshot_file import (
    CLIP_MEAN,
    CLIP_STD,
    ZEROSHOT_ARCH,
    save_zeroshot_classifier,
    zeroshot_class_names,
)

__all__ = [
    "CLIPModel",
    "CLIP_MEAN",
    "CLIP_STD",
    "ClipConfig",
    "ClipTokenizer",
    "DEFAULT_TEMPLATES",
    "RN50",
    "ResNetConfig",
    "TextConfig",
    "VIT_B_32",
    "VisionConfig",
    "VitConfig",
    "ZEROSHOT_ARCH",
    "ZeroShotClassifier",
    "classifier_from_embeddings",
    "clip_from_state",
    "clip_tokenizer",
    "image_tower",
    "infer_clip_config",
    "infer_text_config",
    "infer_vision_config",
    "load_clip",
    "read_clip_state",
    "save_zeroshot_classifier",
    "text_class_embeddings",
    "zeroshot_class_names",
    "zeroshot_classifier",
]
