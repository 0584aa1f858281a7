"""Small image helpers (PNG encoding, grids), the opacity mask of Eq. 5 and image metrics (silhouette IoU, PSNR, SSIM)."""
