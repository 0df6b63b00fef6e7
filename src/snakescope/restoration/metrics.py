"""Restoration quality against a clean target: PSNR (plain and after an affine fit) and SSIM,
read plane by plane so that memory stays at one plane."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snakescope.errors import InputError
from snakescope.restoration.patches import as_source, check_pairs

__all__ = ["restoration_metrics"]


def restoration_metrics(source, restored, target, *, channel: int | None = None, data_range: float | None = None) -> dict:
    """PSNR and SSIM of the input and of the restored image against a clean target.

    ``psnr_*_affine`` and ``ssim_*_affine``: after the least-squares affine fit ``a * image +
    b`` of each image to the target over the whole image (``affine_slope_*`` = a), which is
    insensitive to the contrast and offset differences that separate normalization of noisy
    and clean images leaves (and to N2V's contrast compression); the plain PSNR and SSIM are
    reported too.

    ``data_range`` defaults to the target's ``max - min`` (over the whole target), used for
    both PSNR and SSIM and returned. PSNR is computed over all voxels; SSIM
    (``skimage.metrics.structural_similarity``, 7x7 Gaussian-free window, float64) per y-x
    plane and averaged over planes (t, z), so memory stays at one plane (the affine SSIM reads
    the planes a second time, once the fit is known). Images: NGFF paths,
    NgffImages, ``(array, axes)`` pairs or 2D arrays; all must have the same shape after the
    channel is selected (the target may lack the channel axis).
    """
    from skimage.metrics import structural_similarity

    src = as_source(source, channel, None if not isinstance(source, (str, Path)) else str(source))
    res = as_source(restored, channel, None if not isinstance(restored, (str, Path)) else str(restored))
    tgt = as_source(target, None, None if not isinstance(target, (str, Path)) else str(target))
    if "c" in tgt.axes:
        tgt = as_source(tgt, src.channel)
    check_pairs([src, res], [tgt, tgt])
    shape = tgt.model_shape()
    planes = list(tgt.planes())

    rule = "given"
    if data_range is None:
        rule = "target max - min"
        lo, hi = np.inf, -np.inf
        for region in planes:
            t = tgt.read(region)
            lo, hi = min(lo, float(t.min())), max(hi, float(t.max()))
        data_range = hi - lo
    data_range = float(data_range)
    if not data_range > 0:
        raise InputError(tgt.name, "the target is constant: PSNR/SSIM are undefined")
    sq = {"input": 0.0, "restored": 0.0}
    ssim = {"input": [], "restored": []}
    # sums for the least-squares affine fit a * image + b of each image to the target
    sums = {key: np.zeros(3) for key in sq}  # sum p, sum p^2, sum p*t
    t_sum = t_sq = 0.0
    n = 0
    for region in planes:
        t = tgt.read(region).astype(np.float64).reshape(shape[-2:])
        t_sum, t_sq = t_sum + float(t.sum()), t_sq + float(np.square(t).sum())
        for key, s in (("input", src), ("restored", res)):
            p = s.read(region).astype(np.float64).reshape(shape[-2:])
            sq[key] += float(np.square(p - t).sum())
            sums[key] += (float(p.sum()), float(np.square(p).sum()), float((p * t).sum()))
            ssim[key].append(structural_similarity(t, p, data_range=data_range))
        n += t.size
    out = {"data_range": data_range, "data_range_rule": rule,
           "n_voxels": n}

    def psnr(mse):
        return float("inf") if mse <= 0 else float(10 * np.log10(data_range**2 / mse))

    t_mean, t_var = t_sum / n, t_sq / n - (t_sum / n) ** 2
    fits = {}
    for key in ("input", "restored"):
        mse = sq[key] / n
        out[f"psnr_{key}"] = psnr(mse)
        out[f"ssim_{key}"] = float(np.mean(ssim[key]))
        out[f"mse_{key}"] = float(mse)
        p_sum, p_sq, pt = sums[key]
        p_var, cov = p_sq / n - (p_sum / n) ** 2, pt / n - (p_sum / n) * t_mean
        slope = cov / p_var if p_var > 0 else 0.0
        fits[key] = (slope, t_mean - slope * p_sum / n)
        out[f"psnr_{key}_affine"] = psnr(max(0.0, t_var - slope * cov))
        out[f"affine_slope_{key}"] = float(slope)
    ssim_fit = {key: [] for key in fits}
    for region in planes:
        t = tgt.read(region).astype(np.float64).reshape(shape[-2:])
        for key, s in (("input", src), ("restored", res)):
            slope, offset = fits[key]
            p = s.read(region).astype(np.float64).reshape(shape[-2:])
            ssim_fit[key].append(structural_similarity(t, slope * p + offset, data_range=data_range))
    for key in fits:
        out[f"ssim_{key}_affine"] = float(np.mean(ssim_fit[key]))
    out["psnr_gain"] = out["psnr_restored"] - out["psnr_input"]
    out["psnr_gain_affine"] = out["psnr_restored_affine"] - out["psnr_input_affine"]
    return out
