"""The Animate-X denoiser as pure nn.Modules (torch only: no Lightning, DeepSpeed, W&B, WebDataset)."""
