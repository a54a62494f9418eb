"""Speed measurements (not tests): ``python -m benchmarks.run``."""
