"""Overlays of a Grad-CAM map on its radiograph, and a contact sheet of several per split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

OVERLAY_SIDE = 192  # pixels of a saved overlay: phantoms are 32-64 px, too small to read at their own size
CAM_WEIGHT = 0.45  # share of the heat map in the blend: the anatomy under the hot spot stays visible


def overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """H×W×3 uint8: the grayscale (or RGB, channels first) uint8 `image` under its CAM, with grad-cam's colour map."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = image if image.ndim == 2 else np.moveaxis(image, 0, -1)
    rgb = np.repeat(rgb[..., None], 3, axis=-1) if rgb.ndim == 2 else rgb
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, axis=-1)
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, cam.astype(np.float32), use_rgb=True,
                             image_weight=1.0 - CAM_WEIGHT)


def enlarged(rgb: np.ndarray, side: int = OVERLAY_SIDE) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    if max(h, w) >= side:
        return rgb
    scale = side / max(h, w)
    return np.asarray(Image.fromarray(rgb).resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC))


def png_bytes(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def contact_sheet(tiles: Sequence[np.ndarray], captions: Sequence[str], title: str, columns: int = 6):
    """A matplotlib figure: the overlays in a grid, each captioned (true -> predicted, shares)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(tiles))
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, tile, caption in zip(axes.ravel(), tiles, captions, strict=False):
        ax.imshow(tile)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
