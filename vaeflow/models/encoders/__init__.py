"""Encoder families, one per file; each registers itself in ``registry.ENCODERS``."""
