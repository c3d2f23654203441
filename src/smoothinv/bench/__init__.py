"""Benchmarks on the model zoo: detection (scan every model) and inversion ASR (Table 2)."""
