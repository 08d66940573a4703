"""The paper's seven metrics computed as DisCo computes them (docs/evaluation.md): paired per-frame metrics (PSNR*,
SSIM, L1, LPIPS, legacy PSNR), distribution metrics (FID, FID-VID, FVD) over streamed feature statistics, and
where each network's weights come from. Pure functions and ``nn.Module``s: no Lightning, DeepSpeed or W&B."""
