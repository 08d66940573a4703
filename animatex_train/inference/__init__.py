"""Inference geometry and orchestration for `animate`: long-video windows, pose alignment, the pipeline."""
