"""Synthetic pediatric chest-radiograph phantoms: xferlab's embedded default dataset, in the reference "npy layout".

`generate_phantoms` writes `normal.npy` and `pneumonia.npy` (the train pool, N×S×S uint8; the first 80% of each is
train, the last 20% val), `test_normal.npy`, `test_pneumonia.npy` and `phantoms.json` (every parameter). Each image
is drawn from its own child generator, keyed by (split, class, index), so an image does not depend on how many others
were asked for, and `shift='acquisition'` (the test split rendered as if from another site) leaves the train pool
byte-identical. `render_phantom` is the building block: one image from a generator and acquisition settings.

Rendering works in an attenuation domain (bright = dense) on a normalised patient-frame coordinate grid, then applies
the acquisition chain: detector blur, quantum noise, tone curve, optional burned-in marker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import expit

from xferlab.errors import XferlabError, did_you_mean

GENERATOR_VERSION = "1"  # bump whenever the pixels a given seed produces change
CLASS_NAMES = ("normal", "pneumonia")
TRAIN_FRACTION = 0.8  # the npy layout's convention: first 80% of each class file is train, the rest val
SHIFTS = (None, "none", "acquisition")
MIN_SIZE = 32  # below this ribs and lesions are a pixel or two wide and the anatomy stops being legible

# Defaults: 64 px keeps a pretrained EfficientNet-Lite0 fine-tune at a few seconds per epoch on 2 CPU cores; 500 per
# class (400 train + 100 val) is the smallest pool at which the measured fine-tune reaches >= 90% val accuracy while
# a frozen linear probe stays clearly below it; 150 test per class gives a +/-4 point binomial 95% CI at 85% accuracy.
DEFAULT_SIZE = 64
DEFAULT_N_PER_CLASS = 500
DEFAULT_N_TEST_PER_CLASS = 150

# Spawn-key namespaces: one child SeedSequence per (split, class, image), then one grandchild each for the patient
# (anatomy, textures) and the acquisition (site jitter, noise), so the shift can change acquisition alone.
_SPLIT_KEYS = {"train": 0, "test": 1}
_PATIENT, _ACQUISITION = 0, 1

# Attenuation units: air 0, soft tissue ~0.5, dense bone ~0.8. A pixel of the normalised grid is 2/size wide.
_EDGE_PX = 0.7  # soft organ edges, in pixels: anti-aliasing without supersampling
_NOISE_GAIN = 1.6  # quantum noise grows as exp(gain*A/2): fewer photons reach the detector behind dense tissue
_AIR_CONTRAST = 0.36  # aerated lung versus soft tissue: lung fields a dark grey, not black, at the default window
_WINDOW = (0.02, 0.95)  # attenuation mapped to display black/white before the tone curve
_BARREL = 0.08  # relative narrowing of the chest from the lower ribs to the axillae: a can looks wrong, a barrel not


@dataclass(frozen=True)
class AcquisitionParams:
    """How one image was acquired: the parts of the image that belong to the site, not the patient.

    gamma: tone-curve exponent (>1 darkens mid-tones). contrast: gain about mid-grey. brightness: offset in [0, 1]
    display units. noise: quantum-noise sigma at the display window's low end, in attenuation units. blur: detector
    blur sigma as a fraction of the image width (0.008 is half a pixel at 64 px). marker: burn a bright lettered block
    into the top-left corner.
    """

    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    noise: float = 0.015
    blur: float = 0.008
    marker: bool = False

    @classmethod
    def coerce(cls, value: AcquisitionParams | Mapping[str, Any]) -> AcquisitionParams:
        """Accept the dataclass itself or a dict of its fields; unknown keys are an error, not ignored."""
        if isinstance(value, AcquisitionParams):
            return value
        names = {f.name for f in dataclasses.fields(cls)}
        for key in value:
            if key not in names:
                raise XferlabError(
                    f"acquisition: unknown key {key!r}{did_you_mean(str(key), names)}; valid keys: {sorted(names)}"
                )
        return cls(**dict(value))


# Per-image jitter (uniform ranges) around each site. The home site is what train/val/test look like without a
# shift; the external site is the acquisition shift: a harder tone curve, flatter contrast, more noise (lower dose),
# a softer detector and a burned-in corner marker.
_SITES: dict[str, dict[str, tuple[float, float]]] = {
    "home": {
        "gamma": (0.85, 1.15),
        "contrast": (0.9, 1.1),
        "brightness": (-0.04, 0.04),
        "noise": (0.010, 0.020),
        "blur": (0.004, 0.010),
    },
    "external": {
        "gamma": (1.4, 1.6),
        "contrast": (0.75, 0.85),
        "brightness": (0.03, 0.08),
        "noise": (0.025, 0.035),
        "blur": (0.012, 0.018),
    },
}


def sample_acquisition(rng: np.random.Generator, site: str = "home") -> AcquisitionParams:
    """Draw one image's acquisition settings around a site ('home' or 'external')."""
    if site not in _SITES:
        raise XferlabError(f"site: unknown site {site!r}{did_you_mean(site, _SITES)}; use one of {sorted(_SITES)}")
    ranges = _SITES[site]
    values = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in ranges.items()}
    return AcquisitionParams(**values, marker=site == "external")


@dataclass(frozen=True)
class Lesion:
    """One consolidation-like opacity, in patient-frame coordinates (the chest spans about [-0.8, 0.8])."""

    cx: float
    cy: float
    rx: float
    ry: float
    amplitude: float  # peak fraction of the lung's air replaced by fluid (1 = as dense as soft tissue); some subtle
    solidity: float  # texture threshold bias: high = confluent consolidation, low = patchy bronchopneumonia
    fissure: bool  # cut the top edge sharply, like a lobar consolidation against the horizontal fissure


@dataclass(frozen=True)
class Anatomy:
    """One patient: pose, body habitus and the size and position of every structure (patient frame, y down)."""

    scale: float
    rotation: float
    dx: float
    dy: float
    half_width: float
    wall: float
    density: float
    apex_y: float
    base_y: float
    dome_height: float
    right_dome_raise: float
    medial: float
    heart: tuple[float, float, float, float]  # cx, cy, rx, ry; cx > 0 bulges to the patient's left (image right)
    thymus: float
    spine_half_width: float
    rib_first_y: float
    rib_spacing: float
    rib_thickness: float
    rib_lift: float
    clavicle_y: float
    clavicle_tilt: float
    vessel_strength: float
    gastric_bubble: bool
    nipples: bool
    lesions: tuple[Lesion, ...] = ()


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_anatomy(rng: np.random.Generator, pneumonia: bool) -> Anatomy:
    """Draw one patient. Ranges are chosen by eye against pediatric PA films (large heart, thymus, horizontal ribs)."""
    habitus = _uniform(rng, 0.92, 1.06)
    inspiration = _uniform(rng, -1.0, 1.0)
    heart_scale = _uniform(rng, 0.9, 1.15)  # cardiothoracic ratio ~0.45-0.6, normal for children
    apex_y = _uniform(rng, -0.74, -0.62)
    base_y = 0.5 + 0.1 * inspiration
    anatomy = Anatomy(
        scale=_uniform(rng, 0.88, 1.02),
        rotation=float(rng.normal(0.0, np.deg2rad(3.0))),
        dx=_uniform(rng, -0.06, 0.06),
        dy=_uniform(rng, -0.06, 0.06),
        half_width=0.86 * habitus,
        wall=_uniform(rng, 0.05, 0.1) * habitus,
        density=_uniform(rng, 0.9, 1.1),
        apex_y=apex_y,
        base_y=base_y,
        dome_height=_uniform(rng, 0.10, 0.20),
        right_dome_raise=_uniform(rng, 0.0, 0.07),
        medial=_uniform(rng, 0.10, 0.14),
        heart=(
            _uniform(rng, 0.06, 0.12),
            base_y - _uniform(rng, 0.12, 0.2),
            0.30 * heart_scale,
            0.22 * heart_scale,
        ),
        thymus=float(rng.uniform(0.0, 0.12) if rng.random() < 0.6 else 0.0),
        spine_half_width=_uniform(rng, 0.06, 0.08),
        rib_first_y=apex_y - _uniform(rng, 0.0, 0.06),
        rib_spacing=(base_y - apex_y) / _uniform(rng, 7.0, 8.5),
        rib_thickness=_uniform(rng, 0.035, 0.05),
        rib_lift=_uniform(rng, 0.15, 0.3),
        clavicle_y=apex_y + _uniform(rng, 0.0, 0.08),
        clavicle_tilt=_uniform(rng, 0.02, 0.12),
        vessel_strength=_uniform(rng, 0.6, 1.4),  # benign variation: prominent markings mimic faint opacity
        gastric_bubble=bool(rng.random() < 0.5),
        nipples=bool(rng.random() < 0.25),
    )
    if pneumonia:
        anatomy = dataclasses.replace(anatomy, lesions=_sample_lesions(rng, anatomy))
    return anatomy


# Lesion size (patient-frame radius) and peak attenuation (log-uniform, so some are subtle); tuned so that a frozen
# ImageNet probe stays well below a fine-tuned network (measured numbers in the module docstring).
_LESION_RADIUS = (0.08, 0.16)
_LESION_AMPLITUDE = (0.3, 0.6)
_LESION_SOLIDITY = (-0.6, 0.9)  # texture threshold bias: -0.6 is a sparse patchwork, 0.9 a near-confluent block
_LESION_TRIES = 20  # rejection sampling of lesion centres; nearly every anatomy accepts within a few tries
_LESION_MIN_AERATION = 0.9  # a centre must lie well inside a lung, not behind the heart or at the pleura


def _lesion_centre(rng: np.random.Generator, a: Anatomy) -> tuple[float, float]:
    """A point well inside one of the lung fields: the first of `_LESION_TRIES` candidates that qualifies (all are
    drawn, so the generator advances the same way whichever wins; the last is kept if none does)."""
    lateral = a.half_width - a.wall
    side = np.where(rng.random(_LESION_TRIES) < 0.5, -1.0, 1.0)
    x = side * rng.uniform(a.medial, lateral, _LESION_TRIES)
    y = rng.uniform(a.apex_y, a.base_y, _LESION_TRIES)
    inside = np.flatnonzero(_lung_fields(a, x, y, 0.01) > _LESION_MIN_AERATION)
    pick = int(inside[0]) if inside.size else _LESION_TRIES - 1
    return float(x[pick]), float(y[pick])


def _sample_lesions(rng: np.random.Generator, a: Anatomy) -> tuple[Lesion, ...]:
    """One to three opacities inside the lung fields, of varied size, position and contrast."""
    count = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    lesions = []
    for _ in range(count):
        cx, cy = _lesion_centre(rng, a)
        radius = _uniform(rng, *_LESION_RADIUS)
        lesions.append(
            Lesion(
                cx=cx,
                cy=cy,
                rx=radius * _uniform(rng, 0.8, 1.25),
                ry=radius * _uniform(rng, 0.8, 1.25),
                amplitude=float(np.exp(rng.uniform(*np.log(_LESION_AMPLITUDE)))),
                solidity=_uniform(rng, *_LESION_SOLIDITY),
                fissure=bool(rng.random() < 0.2),
            )
        )
    return tuple(lesions)


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1] (u right, v down); cached and read-only because every image of a size shares it."""
    axis = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    v, u = np.meshgrid(axis, axis, indexing="ij")
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


def _patient_frame(a: Anatomy, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image grid mapped into the patient frame: offset, then rotation, then patient size."""
    u, v = _pixel_grid(size)
    cos, sin = np.cos(a.rotation), np.sin(a.rotation)
    du, dv = u - a.dx, v - a.dy
    return (cos * du + sin * dv) / a.scale, (-sin * du + cos * dv) / a.scale


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return expit(z)


def _chest_half_width(a: Anatomy, y: np.ndarray) -> np.ndarray:
    """A barrel-shaped chest: widest at the lower ribs, narrower at the axillae and the flanks."""
    return a.half_width * (1.0 - _BARREL * ((y - 0.1) / 0.9) ** 2)


def _body(a: Anatomy, x: np.ndarray, y: np.ndarray, e: float) -> np.ndarray:
    """Soft-tissue thorax: a rounded torso with sloping shoulders and a neck, thicker (brighter) in the middle."""
    ax = np.abs(x)
    neck_half_width = 0.25 * a.half_width
    f = np.clip((ax - neck_half_width) / (a.half_width - neck_half_width), 0.0, 1.0)
    shoulder_top = a.apex_y - 0.3 + 0.12 * f + 0.2 * (1.0 - np.sqrt(1.0 - f**2))  # trapezius slope, round shoulder
    half_width = _chest_half_width(a, y)
    # signed distances combine by min (intersection) and max (union) before one soft step: one exp per pixel
    inside = np.minimum(np.maximum(neck_half_width - ax, y - shoulder_top), half_width - ax)
    thickness = np.clip(1.0 - (x / (half_width + 0.02)) ** 2, 0.0, 1.0) ** 0.5
    return 0.5 * a.density * thickness * _sigmoid(inside / e)


def _ellipse_distance(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance to an ellipse's edge (positive inside): (1 - r) times the short semi-axis."""
    return (1.0 - np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)) * min(rx, ry)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, e: float) -> np.ndarray:
    """Soft-edged ellipse mask in [0, 1]."""
    return _sigmoid(_ellipse_distance(x, y, cx, cy, rx, ry) / e)


def _lung_fields(a: Anatomy, x: np.ndarray, y: np.ndarray, e: float) -> np.ndarray:
    """Both lung masks in [0, 1]: rounded apices, domed hemidiaphragms, cut by the mediastinum and heart.

    The lungs are mirror images in |x| (one pass for both), except that the patient's right hemidiaphragm (image
    left, x < 0) sits higher, over the liver.
    """
    lateral = _chest_half_width(a, y) - a.wall
    ax = np.abs(x)
    t = np.clip((y - a.apex_y) / (a.base_y - a.apex_y), 0.0, None)
    lateral_edge = a.medial + (lateral - a.medial) * np.sqrt(np.clip(2.0 * t, 0.0, 1.0))
    f = (ax - a.medial) / (a.half_width - a.wall - a.medial)
    dome = a.base_y - np.where(x < 0, a.right_dome_raise, 0.0)
    dome = dome - a.dome_height * np.clip(1.0 - ((f - 0.35) / 0.65) ** 2, 0.0, 1.0) ** 0.7
    mediastinum = a.medial - 0.02 + a.thymus * np.exp(-(((y - a.apex_y - 0.35) / 0.15) ** 2))
    inside = np.minimum(np.minimum(ax - a.medial, lateral_edge - ax), np.minimum(y - a.apex_y, dome - y))
    inside = np.minimum(inside, np.minimum(ax - mediastinum, -_ellipse_distance(x, y, *a.heart)))
    return _sigmoid(inside / e)


_RIB_CONTRAST = 0.06  # posterior rib over lung: visible but not dominant, as on a well-exposed film
_CLAVICLE_HALF_WIDTH = 0.03  # patient-frame units: about a pixel at 64 px, thinner than a rib


def _rib_bands(y: np.ndarray, path: np.ndarray, first: float, spacing: float, count: int, thickness: float) -> np.ndarray:
    """Evenly spaced bands `path + first + k*spacing` (k < count), rounded in cross-section like a cylinder of bone.

    Computed from each pixel's phase between neighbouring ribs, so the cost does not grow with the rib count.
    """
    phase = (y - path - first) / spacing
    nearest = np.round(phase)
    distance = (phase - nearest) * spacing
    profile = np.sqrt(np.clip(1.0 - (distance / thickness) ** 2, 0.0, 1.0))
    return profile * ((nearest >= 0) & (nearest < count))


def _ribs(a: Anatomy, x: np.ndarray, y: np.ndarray, e: float) -> np.ndarray:
    """Posterior ribs (bright arcs leaving the spine, falling at the chest wall) and fainter anterior ribs."""
    ax = np.abs(x)
    xn = ax / a.half_width
    count = int(np.ceil((a.base_y + 0.2 - a.rib_first_y) / a.rib_spacing))
    posterior_path = -a.rib_lift * xn + (a.rib_lift + 0.2) * xn**2
    posterior = _rib_bands(y, posterior_path, a.rib_first_y, a.rib_spacing, count, a.rib_thickness)
    anterior_path = 0.5 * a.rib_spacing + 0.35 * (1.0 - xn) - 0.15
    anterior = _rib_bands(y, anterior_path, a.rib_first_y, a.rib_spacing, count - 2, 0.8 * a.rib_thickness)
    # lateral of the spine, inside the chest wall, and fading out below the diaphragm behind the abdomen
    extent = np.minimum(np.minimum(ax - a.spine_half_width, a.half_width - 0.02 - ax) / e, (a.base_y + 0.15 - y) / 0.08)
    extent = _sigmoid(extent)
    return extent * (_RIB_CONTRAST * posterior + 0.4 * _RIB_CONTRAST * _sigmoid((ax - 0.25) / (4 * e)) * anterior)


def _spine_and_clavicles(a: Anatomy, x: np.ndarray, y: np.ndarray, e: float) -> np.ndarray:
    """The vertebral column (a bright band with disc spaces) and the two clavicles, rising toward the shoulders."""
    vertebrae = 0.8 + 0.2 * np.cos(np.pi * (y - a.rib_first_y) / a.rib_spacing) ** 2
    spine = 0.08 * vertebrae * np.sqrt(np.clip(1.0 - (x / a.spine_half_width) ** 2, 0.0, 1.0))
    ax = np.abs(x)
    lateral_end = 0.95 * a.half_width
    along = np.clip(ax / lateral_end, 0.0, 1.0)
    shaft = a.clavicle_y - a.clavicle_tilt * along + 0.03 * np.sin(2.0 * np.pi * along)  # a gentle S-curve
    span = _sigmoid(np.minimum(lateral_end - ax, ax - 0.06) / e)
    return spine + 0.12 * span * np.exp(-(((y - shaft) / _CLAVICLE_HALF_WIDTH) ** 2))


def _smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-variance correlated noise: the raw material of lung markings and patchy opacities."""
    field = gaussian_filter(rng.standard_normal((size, size)), sigma_px * size / DEFAULT_SIZE, mode="wrap")
    return field / (field.std() + 1e-12)


# Lung markings: vessels fan out from each hilum. Counts, lengths and widths are chosen by eye at 64 px.
_VESSELS_PER_HILUM = 9


def _vessel_fans(rng: np.random.Generator, dx: np.ndarray, dy: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Tapering vessels radiating from each hilum; (dx lateral, dy down) are offsets from the pixel's own hilum.

    Each pixel takes its nearest vessel in angle, so the cost does not grow with the vessel count. The two fans
    share one sorted angle table: the image-right fan is offset by 2*pi*2, beyond any angle of the other.
    """
    n = _VESSELS_PER_HILUM
    angles = np.sort(rng.uniform(np.deg2rad(-70), np.deg2rad(85), (2, n)), axis=1)  # from the lateral horizontal
    table = (angles + 4.0 * np.pi * np.arange(2)[:, None]).ravel()
    lengths = rng.uniform(0.3, 0.6, 2 * n)
    theta = np.arctan2(dy, dx) + 4.0 * np.pi * right
    r = np.hypot(dx, dy)
    upper = np.clip(np.searchsorted(table, theta), 1, 2 * n - 1)
    nearest = np.where(np.abs(theta - table[upper - 1]) < np.abs(theta - table[upper]), upper - 1, upper)
    offset = theta - table[nearest]
    fade = np.clip(1.0 - r / lengths[nearest], 0.0, 1.0)
    width = 0.006 + 0.022 * fade  # vessels thin toward the periphery
    return fade * np.exp(-((offset * r / width) ** 2)) * _sigmoid((r - 0.05) / 0.02)


def _lung_markings(rng: np.random.Generator, a: Anatomy, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """Vessels radiating from the hila, plus fine parenchymal texture; both classes have them."""
    hilum_y = a.apex_y + 0.5 * (a.base_y - a.apex_y)
    vessels = _vessel_fans(rng, np.abs(x) - (a.medial + 0.02), y - hilum_y, x > 0)
    return 0.06 * a.vessel_strength * vessels + 0.012 * _smooth_noise(rng, size, 1.0)


def _opacities(rng: np.random.Generator, a: Anatomy, x: np.ndarray, y: np.ndarray, size: int, e: float) -> np.ndarray:
    """Fraction of air replaced by fluid, in [0, 1]: per lesion a soft envelope times a thresholded texture, so it
    looks patchy rather than like a disc; overlapping lesions combine like independent events."""
    clear = np.ones_like(x)
    texture = _smooth_noise(rng, size, 1.6)  # one field serves every lesion: they sit in different places
    for lesion in a.lesions:
        r2 = ((x - lesion.cx) / lesion.rx) ** 2 + ((y - lesion.cy) / lesion.ry) ** 2
        envelope = np.exp(-r2 * np.sqrt(r2))  # exp(-r^3): a flatter top and a quicker fall-off than a Gaussian
        patches = _sigmoid(3.0 * (texture + lesion.solidity))
        if lesion.fissure:
            envelope = envelope * _sigmoid((y - (lesion.cy - 0.4 * lesion.ry)) / e)
        clear *= 1.0 - lesion.amplitude * envelope * (0.35 + 0.65 * patches)
    return 1.0 - clear


def _benign_extras(a: Anatomy, x: np.ndarray, y: np.ndarray, e: float) -> np.ndarray:
    """Heart and mediastinal density, gastric air under the left hemidiaphragm, nipple shadows."""
    extra = 0.05 * _ellipse(x, y, *a.heart, e)
    if a.gastric_bubble:
        extra -= 0.14 * _ellipse(x, y, 0.38, a.base_y - a.dome_height + 0.12, 0.12, 0.07, e)
    if a.nipples:
        for side in (-1.0, 1.0):
            extra += 0.04 * _ellipse(x, y, side * 0.5 * a.half_width, a.base_y - 0.12, 0.04, 0.04, e)
    return extra


def render_attenuation(rng: np.random.Generator, size: int, anatomy: Anatomy) -> np.ndarray:
    """The patient's attenuation map (float, bright = dense) before any acquisition effect.

    Lesions draw from `rng` last, so the same generator state renders the same patient with and without them.
    """
    x, y = _patient_frame(anatomy, size)
    e = _EDGE_PX * (2.0 / size) / anatomy.scale
    lungs = _lung_fields(anatomy, x, y, e)
    # lungs are thickest (darkest) away from their edges: blend the sharp mask with a blurred copy
    aeration = 0.5 * lungs + 0.5 * gaussian_filter(lungs, 3.0 * size / DEFAULT_SIZE, mode="nearest")
    markings = lungs * _lung_markings(rng, anatomy, x, y, size)
    if anatomy.lesions:  # consolidation replaces air by fluid: the lung can get no denser than soft tissue
        aeration = aeration * (1.0 - _opacities(rng, anatomy, x, y, size, e))
    body = _body(anatomy, x, y, e)
    in_body = np.clip(body / (0.5 * anatomy.density), 0.0, 1.0) ** 0.2
    attenuation = body - _AIR_CONTRAST * aeration + markings + _benign_extras(anatomy, x, y, e)
    attenuation += in_body * (_ribs(anatomy, x, y, e) * (0.5 + 0.5 * lungs) + _spine_and_clavicles(anatomy, x, y, e))
    return attenuation


def lung_mask(anatomy: Anatomy, size: int) -> np.ndarray:
    """The patient's lung fields on the size×size image grid, in [0, 1] (for checks and region statistics)."""
    x, y = _patient_frame(anatomy, size)
    return _lung_fields(anatomy, x, y, _EDGE_PX * (2.0 / size) / anatomy.scale)


# 5×3 bitmaps of the side markers burned into films ("R"/"L"), drawn dark inside a bright block.
_LETTERS = {
    "R": np.array([[1, 1, 0], [1, 0, 1], [1, 1, 0], [1, 0, 1], [1, 0, 1]], dtype=bool),
    "L": np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1]], dtype=bool),
}
_MARKER_FRACTION = 0.16  # block side as a fraction of the image: legible at 32 px, still only a corner at 64


def _burn_marker(image: np.ndarray, rng: np.random.Generator) -> None:
    """Burn a bright lettered block into the top-left corner, in place (display domain, [0, 1])."""
    size = image.shape[0]
    side = max(6, int(round(_MARKER_FRACTION * size)))
    top, left = (int(v) for v in rng.integers(1, max(2, size // 16) + 1, size=2))
    letter = _LETTERS["R" if rng.random() < 0.5 else "L"]
    scale_y, scale_x = (side - 2) // 5, (side - 2) // 3
    glyph = np.kron(letter, np.ones((max(1, scale_y), max(1, scale_x)), dtype=bool))
    block = np.full((side, side), 0.97)
    gy, gx = (side - glyph.shape[0]) // 2, (side - glyph.shape[1]) // 2
    block[gy : gy + glyph.shape[0], gx : gx + glyph.shape[1]][glyph] = 0.15
    image[top : top + side, left : left + side] = block


def acquire(attenuation: np.ndarray, acquisition: AcquisitionParams, rng: np.random.Generator) -> np.ndarray:
    """Detector blur, quantum noise, tone curve and marker: attenuation map in, uint8 radiograph out."""
    size = attenuation.shape[0]
    signal = gaussian_filter(attenuation, acquisition.blur * size, mode="nearest")
    lo, hi = _WINDOW
    sigma = acquisition.noise * np.exp(_NOISE_GAIN * (np.clip(signal, lo, hi) - lo) / 2.0)
    signal = signal + sigma * rng.standard_normal(signal.shape)
    display = np.clip((signal - lo) / (hi - lo), 0.0, 1.0) ** acquisition.gamma
    display = np.clip(0.5 + acquisition.contrast * (display - 0.5) + acquisition.brightness, 0.0, 1.0)
    if acquisition.marker:
        _burn_marker(display, rng)
    return np.round(display * 255.0).astype(np.uint8)


def render_phantom(
    rng: np.random.Generator,
    size: int,
    pneumonia: bool,
    acquisition: AcquisitionParams | Mapping[str, Any] | None = None,
    *,
    noise_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One size×size uint8 phantom. `rng` draws the patient (anatomy, textures, lesions); `noise_rng` (default: `rng`)
    draws the acquisition noise, so the same patient can be re-imaged under other settings."""
    _check_size(size)
    params = AcquisitionParams() if acquisition is None else AcquisitionParams.coerce(acquisition)
    anatomy = sample_anatomy(rng, pneumonia)
    attenuation = render_attenuation(rng, size, anatomy)
    return acquire(attenuation, params, rng if noise_rng is None else noise_rng)


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise XferlabError(f"size: must be an integer >= {MIN_SIZE} (pixels per side), got {size!r}; pass e.g. size=64")


def _check_args(n_per_class: int, n_test_per_class: int, shift: str | None, seed: int) -> str | None:
    """Validate the counts, shift and seed; return the shift normalised to None or 'acquisition'."""
    for name, value in (("n_per_class", n_per_class), ("n_test_per_class", n_test_per_class)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise XferlabError(f"{name}: must be an integer >= 1 (images per class), got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise XferlabError(f"seed: must be a non-negative integer, got {seed!r}")
    if shift not in SHIFTS:
        hint = did_you_mean(shift, ["none", "acquisition"]) if isinstance(shift, str) else ""
        raise XferlabError(f"shift: must be None, 'none' or 'acquisition', got {shift!r}{hint}")
    return None if shift in (None, "none") else shift


def _image_rngs(seed: int, split: str, label: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The patient and acquisition generators of one image, keyed by position, not by how many images exist."""
    key = (_SPLIT_KEYS[split], label, index)
    patient = np.random.SeedSequence(seed, spawn_key=(*key, _PATIENT))
    acquisition = np.random.SeedSequence(seed, spawn_key=(*key, _ACQUISITION))
    return np.random.default_rng(patient), np.random.default_rng(acquisition)


def _render_class(seed: int, split: str, label: int, count: int, size: int, site: str) -> np.ndarray:
    images = np.empty((count, size, size), dtype=np.uint8)
    for index in range(count):
        patient_rng, acquisition_rng = _image_rngs(seed, split, label, index)
        params = sample_acquisition(acquisition_rng, site)
        images[index] = render_phantom(patient_rng, size, bool(label), params, noise_rng=acquisition_rng)
    return images


def _atomic_write(path: Path, write: Any, mode: str = "wb") -> None:
    """Write through `write(fileobj)` to a temporary name in the same folder, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_phantoms(
    out_dir: str | os.PathLike[str],
    *,
    size: int = DEFAULT_SIZE,
    n_per_class: int = DEFAULT_N_PER_CLASS,
    n_test_per_class: int = DEFAULT_N_TEST_PER_CLASS,
    shift: str | None = None,
    seed: int = 0,
) -> Path:
    """Write the phantom dataset in the npy layout to `out_dir` (created if needed) and return its path.

    Train pool: `normal.npy`, `pneumonia.npy` (n_per_class each; first 80% train, last 20% val). Test:
    `test_normal.npy`, `test_pneumonia.npy` (n_test_per_class each). `shift='acquisition'` renders the same test
    patients under another site's acquisition; the train pool is byte-identical either way. `phantoms.json` is
    written last, so its presence means the folder is complete.
    """
    _check_size(size)
    shift = _check_args(n_per_class, n_test_per_class, shift, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test_site = "external" if shift == "acquisition" else "home"
    plan = {name: ("train", n_per_class, "home") for name in CLASS_NAMES}
    plan.update({f"test_{name}": ("test", n_test_per_class, test_site) for name in CLASS_NAMES})
    for file_stem, (split, count, site) in plan.items():
        label = CLASS_NAMES.index(file_stem.removeprefix("test_"))
        images = _render_class(seed, split, label, count, size, site)
        _atomic_write(out / f"{file_stem}.npy", lambda handle, arr=images: np.save(handle, arr))
    meta = {
        "generator": __name__,
        "generator_version": GENERATOR_VERSION,
        "layout": "npy",
        "size": int(size),
        "n_per_class": int(n_per_class),
        "n_test_per_class": int(n_test_per_class),
        "train_fraction": TRAIN_FRACTION,
        "seed": int(seed),
        "shift": shift,
        "class_names": list(CLASS_NAMES),
        "files": {stem: f"{stem}.npy" for stem in plan},
        "sites": {"train": "home", "test": test_site},
        "site_ranges": {site: {k: list(v) for k, v in ranges.items()} for site, ranges in _SITES.items()},
    }
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    _atomic_write(out / "phantoms.json", lambda handle: handle.write(text), mode="w")
    return out
