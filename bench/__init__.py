"""Benchmarks: `python -m bench [--quick] [--json]`. Ratios are measured side by side in one run."""
