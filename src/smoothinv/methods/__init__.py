"""Inversion methods, all with one call shape (`Inverter.invert`)."""

from .base import InversionResult, Inverter, get_method, list_methods, register_method
from .neural_cleanse import NeuralCleanse, mad_anomaly_index, nc_flagged
from .pixelinv import PixelInv
from .smoothinv import PlainAdv, SmoothInv
from .topoprior import TopoPrior, persistence_0d, topological_loss

__all__ = [
    "InversionResult", "Inverter", "NeuralCleanse", "PixelInv", "PlainAdv", "SmoothInv", "get_method", "list_methods",
    "TopoPrior", "mad_anomaly_index", "nc_flagged", "persistence_0d", "register_method", "topological_loss",
]
