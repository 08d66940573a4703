"""animatex-train: distributed training of Animate-X (ICLR 2025) character animation models."""

from animatex_train._compat import install_torchvision_cpu_shim

__version__ = "0.1.0"

# The one import-time action of the package: without it, torchvision (and so lightning, diffusers
# and open_clip) cannot import on the CPU-only install this project pins. See _compat.py.
install_torchvision_cpu_shim()
