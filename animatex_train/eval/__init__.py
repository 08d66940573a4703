"""Evaluation: sampling from checkpoints and video metrics."""
