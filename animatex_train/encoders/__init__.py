"""Frozen pretrained encoders (SD 2.1 VAE, OpenCLIP ViT-H-14) behind narrow interfaces; never trained or saved."""
