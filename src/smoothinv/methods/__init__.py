"""Inversion methods, all with one call shape (`Inverter.invert`) and one typed configuration each."""

from .base import Found, InversionResult, Inverter, RowControl, RowsOutcome
from .config import MethodConfig
from .neural_cleanse import NeuralCleanse, NeuralCleanseConfig
from .pixelinv import PixelInv, PixelInvConfig
from .registry import MethodSpec, get_method, list_methods, method_spec, register_method
from .smoothinv import PlainAdv, PlainAdvConfig, SmoothInv, SmoothInvConfig
from .topoprior import TopoPrior, TopoPriorConfig, persistence_0d, topological_loss

__all__ = [
    "Found", "InversionResult", "Inverter", "MethodConfig", "MethodSpec", "NeuralCleanse", "NeuralCleanseConfig",
    "PixelInv", "PixelInvConfig", "PlainAdv", "PlainAdvConfig", "RowControl", "RowsOutcome", "SmoothInv",
    "SmoothInvConfig", "TopoPrior", "TopoPriorConfig", "get_method", "list_methods", "method_spec",
    "persistence_0d", "register_method", "topological_loss",
]
