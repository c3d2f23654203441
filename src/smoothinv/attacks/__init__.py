"""Backdoor attacks: triggers and how a model is made to learn them."""

from .poisoning import PoisonedSet, poison

__all__ = ["PoisonedSet", "poison"]
