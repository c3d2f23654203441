"""Detection: scan every class from one clean image, score, and decide."""

from .decision import DecisionRule
from .scan import ClassResult, ScanResult, ScanSettings, scan, scan_eps

__all__ = ["ClassResult", "DecisionRule", "ScanResult", "ScanSettings", "scan", "scan_eps"]
