"""Dual-key multimodal backdoors in VQA models (TrojVQA, scaled down) and their detection by TIJO's
joint trigger inversion in box-feature and token space, with the unimodal baselines.

Layout: language (vocabulary, questions, answers) · scenes (images, the visual key) · detector (the
frozen box-feature extractor) · examples · models (three fusion architectures, safe loading) ·
trojans · training · zoo (recipes, resumable build, store) · inversion (TIJO and baselines) ·
classifier (trojan probability, cross-validated AUC) · bench · report.
"""

from .classifier import TrojanClassifier, cross_validated
from .inversion import INVERSIONS, FeatureInversion, InversionSettings, JointInversion, SweepResult, TokenInversion
from .models import ARCHITECTURES, VQAModel, load_vqa_model, save_vqa_model
from .trojans import Trojan
from .zoo import STORE, build_vqa_zoo, load_support, load_zoo_model, read_manifest

__all__ = ["ARCHITECTURES", "FeatureInversion", "INVERSIONS", "InversionSettings", "JointInversion", "STORE",
           "SweepResult", "TokenInversion", "Trojan", "TrojanClassifier", "VQAModel", "build_vqa_zoo",
           "cross_validated", "load_support", "load_vqa_model", "load_zoo_model", "read_manifest",
           "save_vqa_model"]
