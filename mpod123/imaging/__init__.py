"""Small image helpers (PNG encoding, grids) and image metrics (silhouette IoU, PSNR, SSIM)."""
