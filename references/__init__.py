"""Exact number-format codecs and BF16/FP32 reference math (pure functions, no I/O)."""
