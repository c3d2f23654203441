"""Inversion methods, all with one call shape (`Inverter.invert`)."""

from .base import InversionResult, Inverter, get_method, list_methods, register_method
from .smoothinv import PlainAdv, SmoothInv

__all__ = ["InversionResult", "Inverter", "PlainAdv", "SmoothInv", "get_method", "list_methods", "register_method"]
