"""The benchmarks (make bench, make bench-pipeline) and the code they share (common.py)."""
