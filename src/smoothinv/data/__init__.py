"""Loading clean images and clean sets as float32 tensors in [0,1] (C×H×W / N×C×H×W)."""

from smoothinv.data.clean_sets import CleanSet, load_clean_set
from smoothinv.data.digits import load_digits_images
from smoothinv.data.images import (
    IMAGE_EXTENSIONS,
    convert_channels,
    image_to_tensor,
    load_image,
    resize_and_crop,
    save_image,
    tensor_to_pil,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "CleanSet",
    "convert_channels",
    "image_to_tensor",
    "load_clean_set",
    "load_digits_images",
    "load_image",
    "resize_and_crop",
    "save_image",
    "tensor_to_pil",
]
