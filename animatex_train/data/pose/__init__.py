"""Pose skeletons and drawing: the pose images the denoiser is conditioned on."""
