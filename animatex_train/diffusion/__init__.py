"""Diffusion math: noise schedule, training loss, DDIM sampling with classifier-free guidance."""
