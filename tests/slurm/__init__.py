"""Slurm tests and the helpers the preemption / tracking tests share (multi-process runs, a test cluster)."""
