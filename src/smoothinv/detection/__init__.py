"""Detection: scan every class from one clean image, score, and decide."""

from .decision import DecisionRule
from .scan import ClassResult, Evidence, ScanResult, ScanSettings, scan, scan_eps
from .checkpoint import ScanCheckpoint  # noqa: E402 - imports .scan

__all__ = ["ClassResult", "DecisionRule", "Evidence", "ScanCheckpoint", "ScanResult", "ScanSettings", "scan", "scan_eps"]
