"""Benchmarks for rq-pipeline-fix: ``python -m benchmarks`` from the repository root.

Every figure is a ratio of variants measured side by side in one run, against a real
``redis-server`` started on loopback; see benchmarks/README.md.
"""
