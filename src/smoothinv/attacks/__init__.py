"""Backdoor attacks: triggers and how a model is made to learn them."""

from .poisoning import PoisonedSet, poison
from .specs import (
    ATTACKS,
    AttackSpec,
    BlendTrigger,
    RandomPatchTrigger,
    attack_from_dict,
    get_attack,
    list_attacks,
    poison_with,
    register_attack,
)

__all__ = [
    "ATTACKS",
    "AttackSpec",
    "BlendTrigger",
    "PoisonedSet",
    "RandomPatchTrigger",
    "attack_from_dict",
    "get_attack",
    "list_attacks",
    "poison",
    "poison_with",
    "register_attack",
]
