"""Offline data preparation: videos -> poses, CLIP features, VAE latents -> WebDataset shards."""
