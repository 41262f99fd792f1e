"""Near-copies that a re-export hides (a 1-3 % crop or rescale, JPEG re-encoding, a brightness or contrast change,
mild noise): candidates from a shift-invariant spectral descriptor, confirmed by aligning the two images.

A 1-pixel crop of a small image moves its perceptual hash and its backbone embedding further than distinct chest
X-rays lie apart, but it barely changes the magnitude of the image's low spatial frequencies (translation does not
change it at all, a 3 % rescale moves a frequency by 3 % of itself). So each query image's nearest reference image by
that descriptor is the candidate, and the pair is confirmed the way a person would compare them: register the two
(scikit-image's phase_cross_correlation, over a few scales), then take the normalised correlation of their
band-passed pixels, which ignores brightness and contrast and, band-passed, most of the noise and JPEG blocking.

Both work on the images reduced to WORK_SIDE px (antialiased): every constant below is in pixels of 32-64 px images,
so a 224 or 512 px radiograph is brought to that scale first (its band-pass would otherwise keep only sub-anatomical
texture, and the alignment's cost grows with the pixels). Exact-content hashes stay at full size (leakage.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from xferlab.data.images import gray_levels

# Band-pass (difference of Gaussians, pixels at 32-64 px): below 0.8 px is noise and JPEG blocking, above 3 px the
# anatomy every chest X-ray shares; what is left tells one radiograph from another.
BAND = (0.8, 3.0)
# Spectral descriptor: magnitudes of the lowest frequencies up to this index on each axis (measured on 32 px
# phantoms: 8 puts a copy's original first among 6,000 images for 96-100 % of copies, 4 for 79-100 %).
FREQUENCIES = 8
# Scales tried when aligning: a crop of up to 3 % re-exported at the original size rescales by up to 3 %, either way.
SCALES = (1.0, 0.985, 1.015, 0.97, 1.03)
MARGIN = 3  # pixels left out at each border: interpolation and crops make them unreliable
# Registration resolved to 1/4 pixel.
UPSAMPLE = 4


# The side (the longer one) images are reduced to before descriptors and alignment: the scale the constants were
# tuned at. Planted copies at 224 and 512 px, reduced to it, are found as at 32 px (docs/performance-real-sizes.md,
# `python benchmarks/audit_scale.py detect --size S`); reduced to 64 px, 20 % of the +3 % rescales were missed, and
# at 80 px a clean 2,300-phantom set at 224 px showed one false finding (96 px: none).
WORK_SIDE = 96
# Images reduced at once: 256 images at 512 px are 256 MiB of float32.
_REDUCE_BLOCK = 256


def working_size(images: np.ndarray) -> np.ndarray:
    """N×H×W float32 gray images, reduced (antialiased bilinear, torch's interpolate) so that the longer side is at most
    WORK_SIDE; smaller images as they are."""
    h, w = images.shape[-2:]
    if max(h, w) <= WORK_SIDE:
        return gray_levels(images)
    scale = WORK_SIDE / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = np.empty((len(images), *size), dtype=np.float32)
    for start in range(0, len(images), _REDUCE_BLOCK):
        block = torch.from_numpy(gray_levels(images[start:start + _REDUCE_BLOCK]))[:, None]
        out[start:start + len(block)] = F.interpolate(block, size=size, mode="bilinear", antialias=True,
                                                      align_corners=False)[:, 0].numpy()
    return out


def _band(x: np.ndarray) -> np.ndarray:
    sigma_lo, sigma_hi = BAND
    axes = (0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, (*axes, sigma_lo, sigma_lo)) - ndimage.gaussian_filter(x, (*axes, sigma_hi,
                                                                                                   sigma_hi))


def spectral_descriptors(images: np.ndarray) -> np.ndarray:
    """N × D float32 unit vectors: log magnitudes of the band-passed, Hann-windowed image's lowest frequencies, centred
    per image (so brightness and contrast drop out); taken at working_size."""
    x = _band(working_size(images))
    h, w = x.shape[-2:]
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    spectrum = np.abs(np.fft.rfft2(x * window))
    f = min(FREQUENCIES, h // 2 - 1, w // 2)
    low = np.concatenate([spectrum[:, :f + 1, :f + 1], spectrum[:, -f:, :f + 1]], axis=1).reshape(len(x), -1)
    low = np.log1p(low)
    low -= low.mean(axis=1, keepdims=True)
    return (low / np.maximum(np.linalg.norm(low, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _sample(x: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Each image x[k] (N × H × W) read at source rows ys[k] (N × H) and columns xs[k] (N × W), bilinear,
    edges repeated: scipy.ndimage's order=1, mode="nearest" resampling, done by torch's grid_sample (which takes the
    whole stack in one call; ndimage's per-pixel resampler was half the alignment's time), in x's precision."""
    n, h, w = x.shape
    gy = torch.from_numpy((2.0 * ys / (h - 1) - 1.0).astype(x.dtype))[:, :, None].expand(n, h, w)
    gx = torch.from_numpy((2.0 * xs / (w - 1) - 1.0).astype(x.dtype))[:, None, :].expand(n, h, w)
    out = F.grid_sample(torch.from_numpy(np.ascontiguousarray(x))[:, None], torch.stack([gx, gy], dim=-1),
                        mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, 0].numpy()


def _zoom(x: np.ndarray, scale: float) -> np.ndarray:
    """Each image of the stack x (N × H × W) magnified by `scale` about its centre, same shape."""
    n, h, w = x.shape
    ys = np.broadcast_to((h - 1) / 2.0 + (np.arange(h) - (h - 1) / 2.0) / scale, (n, h))
    xs = np.broadcast_to((w - 1) / 2.0 + (np.arange(w) - (w - 1) / 2.0) / scale, (n, w))
    return _sample(x, ys, xs)


def _register(a_hat: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b (N × H × W) translated onto a (given as its 2-D FFT a_hat) at the peak of their cross-correlation, found to
    1/UPSAMPLE pixel.

    The estimator of scikit-image's phase_cross_correlation with normalization=None (whole-pixel peak from the inverse
    FFT, then the upsampled DFT evaluated only around it), vectorised over the stack because confirmation aligns
    one pair per val/test image and is the leakage step's main cost. tests/audit/test_leakage_scale.py checks the
    shifts against scikit-image's."""
    n, h, w = b.shape
    b_hat = np.fft.fft2(b)
    # not normalised to phase only: on 32-64 px band-passed images the plain cross-correlation peak is the stabler
    cross = a_hat * b_hat.conj()
    coarse = np.abs(np.fft.ifft2(cross)).reshape(n, -1).argmax(axis=1)
    py, px = np.divmod(coarse, w)
    py, px = np.where(py > h // 2, py - h, py), np.where(px > w // 2, px - w, px)
    # the correlation at fractional shifts within one pixel of the peak: its inverse DFT evaluated there
    steps = np.arange(-UPSAMPLE, UPSAMPLE + 1) / UPSAMPLE
    sy, sx = py[:, None] + steps, px[:, None] + steps  # N × S
    ky = np.exp(2j * np.pi * sy[:, :, None] * np.fft.fftfreq(h)[None, None, :]).astype(cross.dtype)  # N × S × H
    kx = np.exp(2j * np.pi * sx[:, :, None] * np.fft.fftfreq(w)[None, None, :]).astype(cross.dtype)  # N × S × W
    fine = np.abs(np.einsum("nsu,nuv,ntv->nst", ky, cross, kx, optimize=True)).reshape(n, -1).argmax(axis=1)
    iy, ix = np.divmod(fine, len(steps))
    dy, dx = sy[np.arange(n), iy], sx[np.arange(n), ix]
    # shifted in the pixel domain (linear, edges repeated): a Fourier shift would ring across the whole image
    moved = _sample(b, np.arange(h) - dy[:, None], np.arange(w) - dx[:, None])
    return moved, np.column_stack([dy, dx])


def _ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised correlation of each pair of rows of the stacks, borders left out (summed in float64)."""
    a = a[:, MARGIN:-MARGIN, MARGIN:-MARGIN].reshape(len(a), -1).astype(np.float64)
    b = b[:, MARGIN:-MARGIN, MARGIN:-MARGIN].reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.maximum(np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1)), 1e-12)


def aligned_similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised correlation of the band-passed images of each pair (a[k], b[k]) after registering b[k] onto a[k],
    best over SCALES, at working_size: 1 for the same picture under any brightness or contrast change.

    In float32 (FFTs, filters, resampling; the correlations summed in float64): half float64's time, which pays for
    the WORK_SIDE the alignment needs."""
    a = _band(working_size(a))
    b = working_size(b)
    a_hat = np.fft.fft2(a)
    best = np.full(len(a), -1.0)
    for scale in SCALES:
        moved = _band(_zoom(b, scale) if scale != 1.0 else b)
        best = np.maximum(best, _ncc(a, _register(a_hat, moved)[0]))
    return best


# Pairs aligned per block: bounds the upsampled correlation surfaces (block × 16 × H × W complex numbers).
_PAIR_BLOCK = 256


def pair_similarities(images, pairs: np.ndarray) -> np.ndarray:
    """aligned_similarities of every (i, j) row of `pairs`, images read by index a block at a time (streamed sets
    decode only these)."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = [aligned_similarities(images[pairs[k:k + _PAIR_BLOCK, 0]], images[pairs[k:k + _PAIR_BLOCK, 1]])
           for k in range(0, len(pairs), _PAIR_BLOCK)]
    return np.concatenate(out) if out else np.empty(0)
