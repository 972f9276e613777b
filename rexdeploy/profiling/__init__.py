"""Profiling: timed loops (benchmark_app / trtexec conventions), the profile run over artifacts
and float baselines, its schema, tables and plots. docs/design.md."""
