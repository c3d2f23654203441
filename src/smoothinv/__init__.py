"""smoothinv: find, identify and picture a classifier's backdoor from one clean image."""

__version__ = "0.1.0"
