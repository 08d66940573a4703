"""animatex-train: distributed training of Animate-X (ICLR 2025) character animation models."""

from animatex_train._compat import install_lazy_shim

__version__ = "0.1.0"

# The one import-time action of the package: without it, torchvision (and so lightning, diffusers
# and open_clip) cannot import on the CPU-only install this project pins. See _compat.py. Lazy: it runs when
# torchvision is first imported, so importing the package (and `animatex-train --help`) loads no torch.
install_lazy_shim()
