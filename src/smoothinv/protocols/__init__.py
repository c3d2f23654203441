"""Protocols over inversion methods: the paper's per-image sweep over a config grid."""
