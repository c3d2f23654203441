"""Detection: scan every class from one clean image, score, and decide."""

from .decision import DecisionRule
from .scan import ClassResult, Evidence, ScanResult, ScanSettings, scan, scan_eps

__all__ = ["ClassResult", "DecisionRule", "Evidence", "ScanResult", "ScanSettings", "scan", "scan_eps"]
