"""Synthetic pediatric chest-radiograph phantoms: xferlab's embedded default dataset, in the reference "npy layout".

`generate_phantoms` writes `normal.npy` and `pneumonia.npy` (the train pool, N×S×S uint8; the first 80% of each is
train, the last 20% val), `test_normal.npy`, `test_pneumonia.npy` and `phantoms.json` (every parameter). Each image
is drawn from its own generators, keyed by (split, class, index), so an image does not depend on how many others were
asked for, and `shift='acquisition'` (the same test patients imaged at another site) leaves the train pool
byte-identical. `render_phantom` is the building block: one image from a generator and acquisition settings. With
`images_per_patient` K > 1, runs of K images show one patient each, named in a `groups.csv` sidecar
(docs/patients.md).

Rendering works in an attenuation domain (bright = dense) on a normalised patient-frame coordinate grid, then applies
the acquisition chain: detector blur, quantum noise, tone curve, optional burned-in marker. Images are rendered in
small batches (per-image parameters broadcast as B×1×1 float32 arrays): the defaults (2,300 images) take 2-3 s.

Measured with the defaults (seed 0; EfficientNet-Lite0 with ImageNet weights at 64 px, CPU, 2 threads):
- frozen features + linear head (Adam 1e-3, batch 32, 30 epochs, cosine): 85% val, 83-85% test;
- fine-tuning everything (Adam 1e-3, batch 32, 8 epochs, cosine): val 51, 61, 78, 90, 91, 95, 95, 95% by epoch;
- `shift='acquisition'`: the frozen probe's test accuracy falls to 50-51% (marker alone: 65%; tone, noise and blur
  alone: 68%), the fine-tuned network's to 58-82% depending on the epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from xferlab import files
from xferlab.data.config import MAX_IMAGE_SIZE
from xferlab.data.groups import SIDECAR, write_sidecar
from xferlab.errors import XferlabError, did_you_mean

GENERATOR_VERSION = "1"  # bump whenever the pixels a given seed produces change
CLASS_NAMES = ("normal", "pneumonia")
TRAIN_FRACTION = 0.8  # the npy layout's convention: first 80% of each class file is train, the rest val
SHIFTS = (None, "none", "acquisition", "shortcut")
MIN_SIZE = 32  # below this ribs and lesions are a pixel or two wide and the anatomy stops being legible

# Defaults. 64 px keeps a Lite0 fine-tune epoch to seconds on 2 CPU cores. 1000 per class (800 train + 200 val): with
# 500 per class (25 steps an epoch) the fine-tuned Lite0 stayed at 70-80% val after 8 epochs in every lesion setting
# tried, because its BatchNorm running statistics (momentum 0.01) lag the weights; 1000 per class reached 94% while
# the frozen probe stayed near 80%. 150 test per class: a +/-4 point binomial 95% CI at 85% accuracy.
DEFAULT_SIZE = 64
DEFAULT_N_PER_CLASS = 1000
DEFAULT_N_TEST_PER_CLASS = 150

# One SeedSequence per (split, class, image, stream): the patient stream draws anatomy, textures and lesions, the
# acquisition stream draws the site jitter, noise and marker, so a shift can change the acquisition alone.
_SPLIT_KEYS = {"train": 0, "test": 1}
_PATIENT, _ACQUISITION = 0, 1
_SHORTCUT = 2  # a third stream for the shortcut coin, so the patient and acquisition draws stay as they were
_POSE = 3  # a fourth for the repositioning of a patient's further images (images_per_patient > 1)
_PROTOCOL = 4  # and a fifth, per patient, for the acquisition settings its images share (images_per_patient > 1)

# `shift='shortcut'`: a burned-in marker that goes with the label in the train pool (train and val) and is absent
# from test, the pattern DeGrave et al. 2021 (Nat. Mach. Intell. 3:610) found in COVID-19 detectors. The marker
# shares follow the example (90 % of one class, 10 % of the other): strong enough for a network to prefer
# it over the lesions, not so pure that every pneumonia has one.
SHORTCUT_MARKER_SHARE = {"normal": 0.1, "pneumonia": 0.9}
ROI_DIR = "roi"  # lung-field masks, one <stem>.npy per image file, outside the layout's *.npy glob
MARKER_DIR = "markers"  # burned-in marker boxes, one <stem>.npy per image file (written when any image has one)
_PIXELS_PER_BATCH = 1 << 15  # 8 images of 64 px: temporaries of 128 KB stay in cache and in the heap (no page faults)
_RENDER_THREADS = 2  # the 2-core target: defaults in ~2.0 s instead of ~2.7 s single-threaded (measured, shared box)
_DTYPE = np.float32  # rendering precision: ample for 8-bit output, and twice the SIMD width of float64

# Attenuation units: air 0, soft tissue ~0.5, bone adds ~0.1. A pixel of the normalised grid is 2/size wide.
_EDGE_PX = 0.7  # soft organ edges, in pixels: anti-aliasing without supersampling
_NOISE_GAIN = 1.6  # quantum noise grows as exp(gain*A/2): fewer photons reach the detector behind dense tissue
_AIR_CONTRAST = 0.36  # aerated lung versus soft tissue: lung fields a dark grey, not black, at the default window
_WINDOW = (0.02, 0.8)  # attenuation mapped to display black/white: bone near white, air black, as on film
_BARREL = 0.08  # relative narrowing of the chest from the lower ribs to the axillae: a can looks wrong, a barrel not
_RIB_CONTRAST = 0.06  # posterior rib over lung: visible but not dominant, as on a well-exposed film
_CLAVICLE_HALF_WIDTH = 0.03  # patient-frame units: about a pixel at 64 px, thinner than a rib
_VESSELS_PER_HILUM = 9  # lung markings; counts, lengths and widths chosen by eye at 64 px


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
    values = rng.uniform(*np.array(list(ranges.values())).T)
    return AcquisitionParams(**dict(zip(ranges, values.tolist())), marker=site == "external")


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


# Uniform ranges of one patient, chosen by eye against pediatric PA films: a large heart (cardiothoracic ratio up to
# ~0.6), often a thymus, fairly horizontal ribs; inspiration moves the diaphragm, habitus scales the chest.
_ANATOMY_RANGES = {
    "habitus": (0.92, 1.06),
    "inspiration": (-1.0, 1.0),
    "heart_scale": (0.9, 1.15),
    "apex_y": (-0.74, -0.62),
    "scale": (0.88, 1.02),
    "dx": (-0.06, 0.06),
    "dy": (-0.06, 0.06),
    "wall": (0.05, 0.1),
    "density": (0.9, 1.1),
    "dome_height": (0.10, 0.20),
    "right_dome_raise": (0.0, 0.07),
    "medial": (0.10, 0.14),
    "heart_cx": (0.06, 0.12),
    "heart_drop": (0.12, 0.2),
    "thymus": (0.0, 0.12),
    "spine_half_width": (0.06, 0.08),
    "rib_start": (0.0, 0.06),
    "rib_count": (7.0, 8.5),
    "rib_thickness": (0.035, 0.05),
    "rib_lift": (0.15, 0.3),
    "clavicle_drop": (0.0, 0.08),
    "clavicle_tilt": (0.02, 0.12),
    "vessel_strength": (0.6, 1.4),  # benign variation: prominent markings look a little like faint opacity
}
_ROTATION_SD = np.deg2rad(3.0)  # children are often imaged slightly rotated
_P_THYMUS, _P_GASTRIC_BUBBLE, _P_NIPPLES = 0.6, 0.5, 0.25


def sample_anatomy(rng: np.random.Generator, pneumonia: bool) -> Anatomy:
    """Draw one patient; with `pneumonia`, also one to three lesions (drawn last, so the patient is the same)."""
    lo, hi = np.array(list(_ANATOMY_RANGES.values())).T
    d = dict(zip(_ANATOMY_RANGES, rng.uniform(lo, hi).tolist()))
    coins = rng.random(3)
    base_y = 0.5 + 0.1 * d["inspiration"]
    anatomy = Anatomy(
        scale=d["scale"],
        rotation=float(rng.normal(0.0, _ROTATION_SD)),
        dx=d["dx"],
        dy=d["dy"],
        half_width=0.86 * d["habitus"],
        wall=d["wall"] * d["habitus"],
        density=d["density"],
        apex_y=d["apex_y"],
        base_y=base_y,
        dome_height=d["dome_height"],
        right_dome_raise=d["right_dome_raise"],
        medial=d["medial"],
        heart=(d["heart_cx"], base_y - d["heart_drop"], 0.30 * d["heart_scale"], 0.22 * d["heart_scale"]),
        thymus=d["thymus"] if coins[0] < _P_THYMUS else 0.0,
        spine_half_width=d["spine_half_width"],
        rib_first_y=d["apex_y"] - d["rib_start"],
        rib_spacing=(base_y - d["apex_y"]) / d["rib_count"],
        rib_thickness=d["rib_thickness"],
        rib_lift=d["rib_lift"],
        clavicle_y=d["apex_y"] + d["clavicle_drop"],
        clavicle_tilt=d["clavicle_tilt"],
        vessel_strength=d["vessel_strength"],
        gastric_bubble=bool(coins[1] < _P_GASTRIC_BUBBLE),
        nipples=bool(coins[2] < _P_NIPPLES),
    )
    if pneumonia:
        anatomy = dataclasses.replace(anatomy, lesions=_sample_lesions(rng, anatomy))
    return anatomy


# Lesions: patient-frame radius, peak fraction of air replaced and texture. Subtle ones come from a patchy texture,
# a small radius or a place over ribs and vessels. Tuned by measurement so that a frozen ImageNet probe stays well
# below a fine-tuned network (numbers in the module docstring); weaker or smaller lesions mostly hurt the fine-tune.
_LESION_RADIUS = (0.15, 0.3)
_LESION_AMPLITUDE = (0.7, 1.0)  # log-uniform
_LESION_SOLIDITY = (-0.2, 1.0)  # texture threshold bias: -0.2 is a patchwork, 1.0 a near-confluent block
_LESION_COUNT_P = (0.6, 0.3, 0.1)  # one, two or three lesions
_P_FISSURE = 0.2  # share of lesions with a sharp upper edge (lobar pattern); the rest are round or patchy
_LESION_TRIES = 20  # rejection sampling of lesion centres; nearly every anatomy accepts within a few tries
_LESION_MIN_AERATION = 0.9  # a centre must lie well inside a lung, not behind the heart or at the pleura


def _lesion_centres(rng: np.random.Generator, a: Anatomy, count: int) -> np.ndarray:
    """`count` points well inside the lung fields (count×2): for each, the first of `_LESION_TRIES` candidates that
    qualifies (the last if none does). All candidates are drawn, so the generator advances the same way regardless."""
    lateral = a.half_width - a.wall
    side = np.where(rng.random((count, _LESION_TRIES)) < 0.5, -1.0, 1.0)
    x = side * rng.uniform(a.medial, lateral, (count, _LESION_TRIES))
    y = rng.uniform(a.apex_y, a.base_y, (count, _LESION_TRIES))
    inside = _lung_fields(a, x, y, 0.01) > _LESION_MIN_AERATION
    pick = np.where(inside.any(axis=1), inside.argmax(axis=1), _LESION_TRIES - 1)
    rows = np.arange(count)
    return np.stack([x[rows, pick], y[rows, pick]], axis=1)


def _sample_lesions(rng: np.random.Generator, a: Anatomy) -> tuple[Lesion, ...]:
    """One to three opacities inside the lung fields, of varied size, position and contrast."""
    count = 1 + int(rng.choice(len(_LESION_COUNT_P), p=_LESION_COUNT_P))
    centres = _lesion_centres(rng, a, count)
    lo = [_LESION_RADIUS[0], 0.8, 0.8, _LESION_SOLIDITY[0], 0.0]
    hi = [_LESION_RADIUS[1], 1.25, 1.25, _LESION_SOLIDITY[1], 1.0]
    shape = rng.uniform(lo, hi, (count, len(lo)))  # radius, x and y stretch, solidity, fissure coin
    amplitude = np.exp(rng.uniform(*np.log(_LESION_AMPLITUDE), count))
    return tuple(
        Lesion(cx, cy, radius * sx, radius * sy, amp, solidity, coin < _P_FISSURE)
        for (cx, cy), (radius, sx, sy, solidity, coin), amp in zip(centres.tolist(), shape.tolist(), amplitude.tolist())
    )


def _column(values: Sequence[Any]) -> np.ndarray:
    """Per-image values as a B×1×1 array, which broadcasts against B×S×S pixel arrays."""
    return np.asarray(values, dtype=_DTYPE).reshape(-1, 1, 1)


def _stack(anatomies: Sequence[Anatomy]) -> SimpleNamespace:
    """The anatomies' fields as B×1×1 arrays (lesions as B×L×1×1, padded with zero amplitude), so that every
    rendering function broadcasts over a batch; a single Anatomy works unchanged as well."""
    fields = {f.name: _column([getattr(a, f.name) for a in anatomies]) for f in dataclasses.fields(Anatomy)
              if f.name not in ("heart", "lesions")}
    fields["heart"] = tuple(_column([a.heart[i] for a in anatomies]) for i in range(4))
    slots = max((len(a.lesions) for a in anatomies), default=0)
    empty = Lesion(0.0, 0.0, 1.0, 1.0, 0.0, 0.0, False)
    padded = [list(a.lesions) + [empty] * (slots - len(a.lesions)) for a in anatomies]
    shape = (len(anatomies), slots, 1, 1)
    fields["lesions"] = {
        f.name: np.asarray([[getattr(les, f.name) for les in row] for row in padded], dtype=_DTYPE).reshape(shape)
        for f in dataclasses.fields(Lesion)
    }
    fields["lesion_slots"] = slots
    return SimpleNamespace(**fields)


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1] (u right, v down); cached and read-only because every image of a size shares it."""
    axis = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(_DTYPE)
    v, u = np.meshgrid(axis, axis, indexing="ij")
    u.setflags(write=False)
    v.setflags(write=False)
    return u, v


def _patient_frame(a: SimpleNamespace, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image grid mapped into each patient's frame: offset, then rotation, then patient size (B×S×S each)."""
    u, v = _pixel_grid(size)
    cos, sin = np.cos(a.rotation), np.sin(a.rotation)
    du, dv = u - a.dx, v - a.dy
    return (cos * du + sin * dv) / a.scale, (-sin * du + cos * dv) / a.scale


# Clamping the arguments of exp and tanh where the result has saturated anyway keeps numpy on its fast vectorised
# path (measured for tanh: 8.6 ns per pixel with arguments up to 50, 1.7 ns once clamped).
_EXP_FLOOR = 30.0  # exp(-30) ~ 1e-13: invisible in an 8-bit image
_TANH_CLAMP = 10.0  # tanh(10) = 1 - 4e-9


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, via tanh, which numpy vectorises several times faster than scipy's expit."""
    return 0.5 + 0.5 * np.tanh(np.clip(0.5 * z, -_TANH_CLAMP, _TANH_CLAMP))


def _bump(z2: np.ndarray) -> np.ndarray:
    """exp(-z2) for z2 >= 0 (a Gaussian profile given its squared argument)."""
    return np.exp(-np.minimum(z2, _EXP_FLOOR))


def _chest_half_width(a: Any, y: np.ndarray) -> np.ndarray:
    """A barrel-shaped chest: widest at the lower ribs, narrower at the axillae and the flanks."""
    return a.half_width * (1.0 - _BARREL * ((y - 0.1) / 0.9) ** 2)


def _body(a: SimpleNamespace, x: np.ndarray, y: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Soft-tissue thorax: a rounded torso with sloping shoulders and a neck, thicker (brighter) in the middle."""
    ax = np.abs(x)
    neck_half_width = 0.25 * a.half_width
    f = np.clip((ax - neck_half_width) / (a.half_width - neck_half_width), 0.0, 1.0)
    shoulder_top = a.apex_y - 0.3 + 0.12 * f + 0.2 * (1.0 - np.sqrt(1.0 - f**2))  # trapezius slope, round shoulder
    half_width = _chest_half_width(a, y)
    # signed distances combine by min (intersection) and max (union) before one soft step: one exp per pixel
    inside = np.minimum(np.maximum(neck_half_width - ax, y - shoulder_top), half_width - ax)
    thickness = np.sqrt(np.clip(1.0 - (x / (half_width + 0.02)) ** 2, 0.0, 1.0))
    return 0.5 * a.density * thickness * _sigmoid(inside / e)


def _ellipse_distance(x: np.ndarray, y: np.ndarray, cx: Any, cy: Any, rx: Any, ry: Any) -> np.ndarray:
    """Approximate signed distance to an ellipse's edge (positive inside): (1 - r) times the short semi-axis."""
    short_axis = np.asarray(np.minimum(rx, ry), dtype=x.dtype)  # keeps float32 when the axes are Python floats
    return (1.0 - np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)) * short_axis


def _lung_fields(a: Any, x: np.ndarray, y: np.ndarray, e: Any) -> np.ndarray:
    """Both lung masks in [0, 1]: rounded apices, domed hemidiaphragms, cut by the mediastinum and heart.

    The lungs are mirror images in |x| (one pass for both), except that the patient's right hemidiaphragm (image
    left, x < 0) sits higher, over the liver. `a` is an Anatomy or a stacked batch.
    """
    lateral = _chest_half_width(a, y) - a.wall
    ax = np.abs(x)
    t = np.clip((y - a.apex_y) / (a.base_y - a.apex_y), 0.0, None)
    lateral_edge = a.medial + (lateral - a.medial) * np.sqrt(np.clip(2.0 * t, 0.0, 1.0))
    f = (ax - a.medial) / (a.half_width - a.wall - a.medial)
    dome = a.base_y - np.where(x < 0, a.right_dome_raise, 0.0)
    dome = dome - a.dome_height * np.sqrt(np.clip(1.0 - ((f - 0.35) / 0.65) ** 2, 0.0, 1.0))
    mediastinum = a.medial - 0.02 + a.thymus * _bump(((y - a.apex_y - 0.35) / 0.15) ** 2)
    inside = np.minimum(np.minimum(ax - a.medial, lateral_edge - ax), np.minimum(y - a.apex_y, dome - y))
    inside = np.minimum(inside, np.minimum(ax - mediastinum, -_ellipse_distance(x, y, *a.heart)))
    return _sigmoid(inside / e)


def _rib_bands(y: np.ndarray, path: np.ndarray, first: Any, spacing: Any, count: Any, thickness: Any) -> np.ndarray:
    """Evenly spaced bands `path + first + k*spacing` (k < count), rounded in cross-section like a cylinder of bone.

    Computed from each pixel's phase between neighbouring ribs, so the cost does not grow with the rib count.
    """
    phase = (y - path - first) / spacing
    nearest = np.round(phase)
    distance = (phase - nearest) * spacing
    profile = np.sqrt(np.clip(1.0 - (distance / thickness) ** 2, 0.0, 1.0))
    return profile * ((nearest >= 0) & (nearest < count))


def _ribs(a: SimpleNamespace, x: np.ndarray, y: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Posterior ribs (bright arcs leaving the spine, falling at the chest wall) and fainter anterior ribs."""
    ax = np.abs(x)
    xn = ax / a.half_width
    count = np.ceil((a.base_y + 0.2 - a.rib_first_y) / a.rib_spacing)
    posterior_path = -a.rib_lift * xn + (a.rib_lift + 0.2) * xn**2
    posterior = _rib_bands(y, posterior_path, a.rib_first_y, a.rib_spacing, count, a.rib_thickness)
    anterior_path = 0.5 * a.rib_spacing + 0.35 * (1.0 - xn) - 0.15
    anterior = _rib_bands(y, anterior_path, a.rib_first_y, a.rib_spacing, count - 2, 0.8 * a.rib_thickness)
    # lateral of the spine, inside the chest wall, and fading out below the diaphragm behind the abdomen
    extent = np.minimum(np.minimum(ax - a.spine_half_width, a.half_width - 0.02 - ax) / e, (a.base_y + 0.15 - y) / 0.08)
    anterior_weight = 0.4 * _sigmoid((ax - 0.25) / (4 * e))  # anterior ribs fade toward the sternum (cartilage)
    return _RIB_CONTRAST * _sigmoid(extent) * (posterior + anterior_weight * anterior)


def _spine_and_clavicles(a: SimpleNamespace, x: np.ndarray, y: np.ndarray, e: np.ndarray) -> np.ndarray:
    """The vertebral column (a bright band with disc spaces) and the two clavicles, rising toward the shoulders."""
    phase = (y - a.rib_first_y) / a.rib_spacing
    vertebrae = 0.8 + 0.4 * np.abs(phase - np.round(phase))  # a disc space (darker) once per rib level
    spine = 0.08 * vertebrae * np.sqrt(np.clip(1.0 - (x / a.spine_half_width) ** 2, 0.0, 1.0))
    ax = np.abs(x)
    lateral_end = 0.95 * a.half_width
    along = np.clip(ax / lateral_end, 0.0, 1.0)
    s_curve = 10.4 * along * (1.0 - along) * (1.0 - 2.0 * along)  # a cubic with sin(2*pi*t)'s zeros, peak ~1
    shaft = a.clavicle_y - a.clavicle_tilt * along + 0.03 * s_curve
    span = _sigmoid(np.minimum(lateral_end - ax, ax - 0.06) / e)
    return spine + 0.12 * span * _bump(((y - shaft) / _CLAVICLE_HALF_WIDTH) ** 2)


def _smooth_noise(white: np.ndarray, sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-variance correlated noise from white noise (B×S×S): periodic Gaussian filtering by FFT."""
    size = white.shape[-1]
    sigma = sigma_px * size / DEFAULT_SIZE
    fy, fx = np.fft.fftfreq(size)[:, None], np.fft.rfftfreq(size)[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2)).astype(white.dtype)
    field = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=(size, size))
    field -= field.mean(axis=(-2, -1), keepdims=True)
    return field / (field.std(axis=(-2, -1), keepdims=True) + 1e-12)


def _vessel_fans(
    angles: np.ndarray, lengths: np.ndarray, dx: np.ndarray, dy: np.ndarray, right: np.ndarray
) -> np.ndarray:
    """Tapering vessels radiating from each hilum; (dx lateral, dy down) are offsets from the pixel's own hilum.

    `angles` and `lengths` are B×2×K (image-left fan, image-right fan). Each pixel takes its nearest vessel in angle,
    so the cost does not grow with K. All fans share one sorted table: fan j of image b is offset by 4*pi*(2b + j),
    beyond any angle of the fans before it, and a pixel looks itself up with the same offset.
    """
    batch, fans, k = angles.shape
    offsets = (4.0 * np.pi * np.arange(batch * fans)).astype(_DTYPE).reshape(batch, fans, 1)
    table = (np.sort(angles, axis=-1) + offsets).ravel()
    fan_index = fans * np.arange(batch).reshape(-1, 1, 1) + right  # which fan of `table` each pixel belongs to
    theta = np.arctan2(dy, dx) + (4.0 * np.pi * fan_index).astype(dx.dtype)
    r = np.sqrt(dx**2 + dy**2)
    first = k * fan_index
    upper = np.clip(np.searchsorted(table, theta), first + 1, first + k - 1)
    nearest = np.where(np.abs(theta - table[upper - 1]) < np.abs(theta - table[upper]), upper - 1, upper)
    fade = np.clip(1.0 - r / np.take(lengths.ravel(), nearest), 0.0, 1.0)
    width = 0.006 + 0.022 * fade  # vessels thin toward the periphery
    return fade * _bump(((theta - table[nearest]) * r / width) ** 2) * _sigmoid((r - 0.05) / 0.02)


@dataclass(frozen=True)
class _Textures:
    """The random fields of a batch, drawn from each image's patient generator after its anatomy."""

    vessel_angles: np.ndarray  # B×2×K, radians from the lateral horizontal
    vessel_lengths: np.ndarray  # B×2×K
    parenchyma: np.ndarray  # B×S×S white noise
    lesion: np.ndarray | None  # B×S×S white noise, or None when no image of the batch has lesions


def _draw_textures(rngs: Sequence[np.random.Generator], size: int, lesions: bool) -> _Textures:
    k = _VESSELS_PER_HILUM
    angles, lengths, parenchyma, lesion = [], [], [], []
    for rng in rngs:  # one image at a time, each from its own generator, in a fixed order
        angles.append(rng.uniform(np.deg2rad(-70), np.deg2rad(85), (2, k)).astype(_DTYPE))
        lengths.append(rng.uniform(0.3, 0.6, (2, k)).astype(_DTYPE))
        parenchyma.append(rng.standard_normal((size, size), dtype=_DTYPE))
        if lesions:
            lesion.append(rng.standard_normal((size, size), dtype=_DTYPE))
    return _Textures(np.stack(angles), np.stack(lengths), np.stack(parenchyma), np.stack(lesion) if lesions else None)


def _lung_markings(a: SimpleNamespace, tex: _Textures, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Vessels radiating from the hila, plus fine parenchymal texture; both classes have them."""
    hilum_y = a.apex_y + 0.5 * (a.base_y - a.apex_y)
    vessels = _vessel_fans(tex.vessel_angles, tex.vessel_lengths, np.abs(x) - (a.medial + 0.02), y - hilum_y, x > 0)
    return 0.06 * a.vessel_strength * vessels + 0.012 * _smooth_noise(tex.parenchyma, 1.0)


def _opacities(a: SimpleNamespace, white: np.ndarray, x: np.ndarray, y: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Fraction of air replaced by fluid, in [0, 1]: per lesion a soft envelope times a thresholded texture, so it
    looks patchy rather than like a disc; overlapping lesions combine like independent events."""
    texture = _smooth_noise(white, 1.6)  # one field serves all of an image's lesions: they sit in different places
    clear = np.ones_like(x)
    for slot in range(a.lesion_slots):
        lesion = {name: values[:, slot] for name, values in a.lesions.items()}
        r2 = ((x - lesion["cx"]) / lesion["rx"]) ** 2 + ((y - lesion["cy"]) / lesion["ry"]) ** 2
        envelope = _bump(r2 * np.sqrt(r2))  # exp(-r^3): a flatter top and a quicker fall-off than a Gaussian
        fissure = _sigmoid((y - (lesion["cy"] - 0.4 * lesion["ry"])) / e)
        envelope = envelope * np.where(lesion["fissure"] > 0, fissure, 1.0)
        patches = _sigmoid(3.0 * (texture + lesion["solidity"]))
        clear *= 1.0 - lesion["amplitude"] * envelope * (0.35 + 0.65 * patches)
    return 1.0 - clear


def _benign_extras(a: SimpleNamespace, x: np.ndarray, y: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Heart density, gastric air under the left hemidiaphragm, nipple shadows over the lower lungs."""
    extra = 0.05 * _sigmoid(_ellipse_distance(x, y, *a.heart) / e)
    bubble = _ellipse_distance(x, y, 0.38, a.base_y - a.dome_height + 0.12, 0.12, 0.07)
    extra -= 0.14 * a.gastric_bubble * _sigmoid(bubble / e)
    nipple = _ellipse_distance(np.abs(x), y, 0.5 * a.half_width, a.base_y - 0.12, 0.04, 0.04)
    return extra + 0.04 * a.nipples * _sigmoid(nipple / e)


def _attenuation(a: SimpleNamespace, tex: _Textures, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The patients' attenuation maps (B×S×S float, bright = dense) before any acquisition effect, and their lung
    fields in [0, 1] (the region of interest the phantoms write)."""
    x, y = _patient_frame(a, size)
    e = _EDGE_PX * (2.0 / size) / a.scale
    lungs = _lung_fields(a, x, y, e)
    # lungs are thickest (darkest) away from their edges: blend the sharp mask with a blurred copy
    blur = 3.0 * size / DEFAULT_SIZE
    aeration = 0.5 * lungs + 0.5 * gaussian_filter(lungs, (0.0, blur, blur), mode="nearest")
    if tex.lesion is not None:  # consolidation replaces air by fluid: the lung can get no denser than soft tissue
        aeration = aeration * (1.0 - _opacities(a, tex.lesion, x, y, e))
    body = _body(a, x, y, e)
    in_body = np.sqrt(np.sqrt(np.clip(body / (0.5 * a.density), 0.0, 1.0)))  # ~1 inside, 0 in air
    attenuation = body - _AIR_CONTRAST * aeration + lungs * _lung_markings(a, tex, x, y) + _benign_extras(a, x, y, e)
    attenuation += in_body * (_ribs(a, x, y, e) * (0.5 + 0.5 * lungs) + _spine_and_clavicles(a, x, y, e))
    return attenuation, lungs


def lung_mask(anatomy: Anatomy, size: int) -> np.ndarray:
    """The patient's lung fields on the size×size image grid, in [0, 1] (for checks and region statistics)."""
    a = _stack([anatomy])
    x, y = _patient_frame(a, size)
    return _lung_fields(a, x, y, _EDGE_PX * (2.0 / size) / a.scale)[0]


# 5×3 bitmaps of the side markers burned into films ("R"/"L"), drawn dark inside a bright block.
_LETTERS = {
    "R": np.array([[1, 1, 0], [1, 0, 1], [1, 1, 0], [1, 0, 1], [1, 0, 1]], dtype=bool),
    "L": np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1]], dtype=bool),
}
_MARKER_FRACTION = 0.16  # block side as a fraction of the image: legible at 32 px, still only a corner at 64


def _burn_marker(image: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Burn a bright lettered block into the top-left corner, in place (display domain, [0, 1]); return its box
    (x0, y0, x1, y1), end exclusive."""
    size = image.shape[0]
    side = max(6, int(round(_MARKER_FRACTION * size)))
    top, left = (int(v) for v in rng.integers(1, max(2, size // 16) + 1, size=2))
    letter = _LETTERS["R" if rng.random() < 0.5 else "L"]
    scale_y, scale_x = max(1, (side - 2) // 5), max(1, (side - 2) // 3)
    glyph = np.kron(letter, np.ones((scale_y, scale_x), dtype=bool))
    block = np.full((side, side), 0.97)
    gy, gx = (side - glyph.shape[0]) // 2, (side - glyph.shape[1]) // 2
    block[gy : gy + glyph.shape[0], gx : gx + glyph.shape[1]][glyph] = 0.15
    image[top : top + side, left : left + side] = block
    return left, top, min(size, left + side), min(size, top + side)


def _detector_blur(images: np.ndarray, sigma_px: np.ndarray) -> np.ndarray:
    """Gaussian blur with a different sigma per image (B), by FFT over an edge-reflected margin."""
    pad = max(1, int(np.ceil(4.0 * sigma_px.max())))
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    height, width = padded.shape[-2:]
    f2 = np.fft.fftfreq(height)[:, None] ** 2 + np.fft.rfftfreq(width)[None, :] ** 2
    transfer = np.exp(-2.0 * np.pi**2 * sigma_px.reshape(-1, 1, 1) ** 2 * f2).astype(images.dtype)
    blurred = np.fft.irfft2(np.fft.rfft2(padded) * transfer, s=(height, width))
    return blurred[:, pad:-pad, pad:-pad]


def _acquire(
    attenuation: np.ndarray, params: Sequence[AcquisitionParams], rngs: Sequence[np.random.Generator]
) -> tuple[np.ndarray, np.ndarray]:
    """Detector blur, quantum noise, tone curve and marker: attenuation maps in, uint8 radiographs out, with each
    image's marker box (x0, y0, x1, y1; all -1 without a marker)."""
    size = attenuation.shape[-1]
    column = {f.name: _column([getattr(p, f.name) for p in params]) for f in dataclasses.fields(AcquisitionParams)}
    signal = _detector_blur(attenuation, column["blur"].ravel() * size)
    lo, hi = _WINDOW
    white = np.stack([rng.standard_normal((size, size), dtype=_DTYPE) for rng in rngs])
    signal = signal + column["noise"] * np.exp(_NOISE_GAIN * (np.clip(signal, lo, hi) - lo) / 2.0) * white
    display = np.clip((signal - lo) / (hi - lo), 0.0, 1.0) ** column["gamma"]
    display = np.clip(0.5 + column["contrast"] * (display - 0.5) + column["brightness"], 0.0, 1.0)
    boxes = np.full((len(params), 4), -1, dtype=np.int16)
    for i, (image, p, rng) in enumerate(zip(display, params, rngs)):
        if p.marker:
            boxes[i] = _burn_marker(image, rng)
    return np.round(display * 255.0).astype(np.uint8), boxes


def _render_batch(
    patient_rngs: Sequence[np.random.Generator],
    acquisition_rngs: Sequence[np.random.Generator],
    params: Sequence[AcquisitionParams],
    size: int,
    pneumonia: bool,
    pose_rngs: Sequence[np.random.Generator] | None = None,
) -> _Rendered:
    """B images: every random draw of image i comes from its own two generators, in a fixed order; with
    `pose_rngs`, each image's positioning is moved a little from its patient's (another image of the same patient)."""
    anatomies = [sample_anatomy(rng, pneumonia) for rng in patient_rngs]
    if pose_rngs is not None:
        anatomies = [_reposition(a, rng) for a, rng in zip(anatomies, pose_rngs)]
    textures = _draw_textures(patient_rngs, size, pneumonia)
    attenuation, lungs = _attenuation(_stack(anatomies), textures, size)
    images, markers = _acquire(attenuation, params, acquisition_rngs)
    return _Rendered(images, lungs > 0.5, markers)


@dataclass(frozen=True)
class _Rendered:
    """A batch of phantoms with what the generator knows about them: lung fields and marker boxes."""

    images: np.ndarray  # B×S×S uint8
    lungs: np.ndarray  # B×S×S bool: the lung fields, the region of interest
    markers: np.ndarray  # B×4 int16 x0, y0, x1, y1 (end exclusive); -1 where an image has no marker


def render_phantom(
    rng: np.random.Generator,
    size: int,
    pneumonia: bool,
    acquisition: AcquisitionParams | Mapping[str, Any] | None = None,
    *,
    noise_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One size×size uint8 phantom. `rng` draws the patient (anatomy, lesions, textures); `noise_rng` (default:
    `rng`, after the patient) draws the noise and marker, so the same patient can be re-imaged under other settings."""
    _check_size(size)
    params = AcquisitionParams() if acquisition is None else AcquisitionParams.coerce(acquisition)
    rendered = _render_batch([rng], [rng if noise_rng is None else noise_rng], [params], size, bool(pneumonia))
    return rendered.images[0]


# Bounds that catch a typo before it allocates: the largest image size a config accepts, and 4 GiB of uint8
# phantoms, far beyond any study here (the reference study's 2,400 images at 256 px take 150 MiB).
MAX_SIZE = MAX_IMAGE_SIZE
MAX_TOTAL_BYTES = 4 << 30


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise XferlabError(f"size: must be an integer from {MIN_SIZE} to {MAX_SIZE} (pixels per side), got "
                           f"{size!r}; pass e.g. size=64")


def _check_total(size: int, n_per_class: int, n_test_per_class: int) -> None:
    total = len(CLASS_NAMES) * (n_per_class + n_test_per_class) * size * size
    if total > MAX_TOTAL_BYTES:
        raise XferlabError(f"n_per_class, n_test_per_class, size: {total / 2**30:.1f} GiB of images, more than "
                           f"{MAX_TOTAL_BYTES >> 30} GiB; ask for fewer or smaller phantoms")


def _check_args(n_per_class: int, n_test_per_class: int, shift: str | None, seed: int) -> str | None:
    """Validate the counts, shift and seed; return the shift normalised to None or 'acquisition'."""
    for name, value in (("n_per_class", n_per_class), ("n_test_per_class", n_test_per_class)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise XferlabError(f"{name}: must be an integer >= 1 (images per class), got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise XferlabError(f"seed: must be a non-negative integer, got {seed!r}")
    if shift not in SHIFTS:
        hint = did_you_mean(shift, ["none", "acquisition", "shortcut"]) if isinstance(shift, str) else ""
        raise XferlabError(f"shift: must be None, 'none', 'acquisition' or 'shortcut', got {shift!r}{hint}")
    return None if shift in (None, "none") else shift


MAX_IMAGES_PER_PATIENT = 100  # catches a typo; the pediatric pneumonia set's most imaged patient has 12 (issue 25)


def _check_per_patient(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_IMAGES_PER_PATIENT:
        raise XferlabError(f"images_per_patient: must be an integer from 1 to {MAX_IMAGES_PER_PATIENT}, got {value!r}")


def patient_ids(stem: str, count: int, per_patient: int) -> list[str]:
    """The patient of each of `count` images of one file: `<stem>-<patient number>`, per_patient images each."""
    return [f"{stem}-{i // per_patient:05d}" for i in range(count)]


def _write_groups(out: Path, counts: dict[str, int], per_patient: int) -> None:
    """groups.csv for K > 1; with K = 1 every image is its own patient, and a groups.csv left by an earlier call
    into the same folder is removed (it would describe other images)."""
    if per_patient == 1:
        (out / SIDECAR).unlink(missing_ok=True)
        return
    write_sidecar(out, {name: patient_ids(Path(name).stem, n, per_patient) for name, n in counts.items()})


def _image_rngs(seed: int, split: str, label: int, index: int,
                per_patient: int = 1) -> tuple[np.random.Generator, np.random.Generator]:
    """The patient and acquisition generators of one image, keyed by position, not by how many images exist. With
    `per_patient` images per patient, images index // per_patient share the patient generator (one patient: the same
    anatomy, textures and lesions), and each keeps an acquisition of its own."""
    key = (_SPLIT_KEYS[split], label, index)
    patient = np.random.SeedSequence(seed, spawn_key=(_SPLIT_KEYS[split], label, index // per_patient, _PATIENT))
    acquisition = np.random.SeedSequence(seed, spawn_key=(*key, _ACQUISITION))
    return np.random.default_rng(patient), np.random.default_rng(acquisition)


# Another image of the same patient is positioned a little differently: uniform shifts of up to this much of the
# patient frame (a sixth of _ANATOMY_RANGES' dx/dy) and a rotation of this standard deviation (a sixth of
# _ROTATION_SD): a repeat film at the same department. Measured at 32 px, 4 images per patient, 120 patients: an
# image's nearest neighbour by EfficientNet-Lite0 embedding is one of its patient's in 71 % of images (chance: 0.6 %);
# with three times these offsets in 55 %, without any in 76 % (quantum noise is the rest).
_REPOSITION_SHIFT = 0.01
_REPOSITION_ROTATION_SD = np.deg2rad(0.5)


def _stream(seed: int, split: str, label: int, index: int, stream: int) -> np.random.Generator:
    """A generator of its own per (image or patient, stream), so the patient and acquisition draws stay as they
    were."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_KEYS[split], label, index, stream)))


def _reposition(anatomy: Anatomy, rng: np.random.Generator) -> Anatomy:
    dx, dy = rng.uniform(-_REPOSITION_SHIFT, _REPOSITION_SHIFT, 2)
    return dataclasses.replace(anatomy, dx=anatomy.dx + float(dx), dy=anatomy.dy + float(dy),
                               rotation=anatomy.rotation + float(rng.normal(0.0, _REPOSITION_ROTATION_SD)))


def _shortcut_coin(seed: int, split: str, label: int, index: int) -> float:
    """A uniform draw of its own per image: whether it carries the shortcut marker, independent of every other draw."""
    key = (_SPLIT_KEYS[split], label, index, _SHORTCUT)
    return float(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key)).random())


def _render_range(seed: int, split: str, label: int, start: int, stop: int, size: int, site: str,
                  marker_share: float, per_patient: int = 1) -> _Rendered:
    """Images start..stop-1 of one (split, class) as one batch; `marker_share` of them get the shortcut marker;
    `per_patient` consecutive images show one patient."""
    patient_rngs, acquisition_rngs = zip(*(_image_rngs(seed, split, label, i, per_patient) for i in range(start, stop)))
    # one patient, one department's protocol: a patient's images share tone, contrast and detector settings, and
    # differ in positioning and quantum noise (and markers)
    protocol = acquisition_rngs if per_patient == 1 else \
        [_stream(seed, split, label, i // per_patient, _PROTOCOL) for i in range(start, stop)]
    params = [sample_acquisition(rng, site) for rng in protocol]
    if marker_share > 0:
        params = [dataclasses.replace(p, marker=p.marker or _shortcut_coin(seed, split, label, i) < marker_share)
                  for i, p in enumerate(params, start)]
    poses = [_stream(seed, split, label, i, _POSE) for i in range(start, stop)] if per_patient > 1 else None
    return _render_batch(patient_rngs, acquisition_rngs, params, size, bool(label), poses)


def _render_class(seed: int, split: str, label: int, count: int, size: int, site: str,
                  marker_share: float = 0.0, per_patient: int = 1) -> _Rendered:
    """All images of one (split, class), in batches that bound the memory of the float temporaries. Batches run on
    `_RENDER_THREADS` threads (numpy releases the GIL inside its loops); each image depends only on its own
    generators, so the result is the same whatever the thread count or schedule."""
    out = _Rendered(np.empty((count, size, size), dtype=np.uint8), np.empty((count, size, size), dtype=bool),
                    np.empty((count, 4), dtype=np.int16))
    step = max(1, _PIXELS_PER_BATCH // (size * size))
    with ThreadPoolExecutor(max_workers=min(_RENDER_THREADS, os.cpu_count() or 1)) as pool:
        jobs = {
            start: pool.submit(_render_range, seed, split, label, start, min(count, start + step), size, site,
                               marker_share, per_patient)
            for start in range(0, count, step)
        }
        for start, job in jobs.items():
            batch = job.result()
            stop = start + len(batch.images)
            out.images[start:stop], out.lungs[start:stop], out.markers[start:stop] = (
                batch.images, batch.lungs, batch.markers)
    return out


def generate_phantoms(
    out_dir: str | os.PathLike[str],
    *,
    size: int = DEFAULT_SIZE,
    n_per_class: int = DEFAULT_N_PER_CLASS,
    n_test_per_class: int = DEFAULT_N_TEST_PER_CLASS,
    shift: str | None = None,
    seed: int = 0,
    images_per_patient: int = 1,
) -> Path:
    """Write the phantom dataset in the npy layout to `out_dir` (created if needed) and return its path.

    Train pool: `normal.npy`, `pneumonia.npy` (n_per_class each; first 80% train, last 20% val). Test:
    `test_normal.npy`, `test_pneumonia.npy` (n_test_per_class each). `shift='acquisition'` renders the same test
    patients under another site's acquisition; the train pool is byte-identical either way. `shift='shortcut'`
    burns a marker into SHORTCUT_MARKER_SHARE of each class of the train pool (train and val) and none into test;
    the test split is then byte-identical to the unshifted one.

    Regions of interest: `roi/<stem>.npy` holds each image's lung fields (N×S×S uint8, 1 inside), in the order of
    `<stem>.npy`; `markers/<stem>.npy` (N×4 int16 x0, y0, x1, y1, end exclusive, -1 without a marker) is written
    when some image has a marker. Both live in subfolders, so the npy layout's `*.npy` classes do not see them, and
    phantoms.json names them. `phantoms.json` is written last, so its presence means the folder is complete.

    `images_per_patient` K > 1: each run of K consecutive images of a file shows one patient (the same anatomy,
    textures and lesions under the same acquisition settings, positioned a little differently, each image with its
    own quantum noise: a patient a model can recognise), and `groups.csv` (xferlab.data.groups' npy sidecar) names
    the patients. K = 1 writes the
    images K = 1 always wrote, and no groups.csv.
    """
    _check_size(size)
    shift = _check_args(n_per_class, n_test_per_class, shift, seed)
    _check_per_patient(images_per_patient)
    _check_total(size, n_per_class, n_test_per_class)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test_site = "external" if shift == "acquisition" else "home"
    plan = {name: ("train", n_per_class, "home") for name in CLASS_NAMES}
    plan.update({f"test_{name}": ("test", n_test_per_class, test_site) for name in CLASS_NAMES})
    (out / ROI_DIR).mkdir(exist_ok=True)
    markers = {}
    for file_stem, (split, count, site) in plan.items():
        name = file_stem.removeprefix("test_")
        label = CLASS_NAMES.index(name)
        share = SHORTCUT_MARKER_SHARE[name] if shift == "shortcut" and split == "train" else 0.0
        rendered = _render_class(seed, split, label, count, size, site, share, images_per_patient)
        files.write_file(out / f"{file_stem}.npy", lambda handle, arr=rendered.images: np.save(handle, arr))
        roi = rendered.lungs.astype(np.uint8)
        files.write_file(out / ROI_DIR / f"{file_stem}.npy", lambda handle, arr=roi: np.save(handle, arr))
        markers[file_stem] = rendered.markers
    marker_files = {}
    if any((boxes >= 0).any() for boxes in markers.values()):
        (out / MARKER_DIR).mkdir(exist_ok=True)
        for file_stem, boxes in markers.items():
            files.write_file(out / MARKER_DIR / f"{file_stem}.npy", lambda handle, arr=boxes: np.save(handle, arr))
            marker_files[file_stem] = f"{MARKER_DIR}/{file_stem}.npy"
    _write_groups(out, {f"{stem}.npy": count for stem, (_, count, _) in plan.items()}, images_per_patient)
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
        "roi": {"kind": "mask", "what": "lung fields", "files": {stem: f"{ROI_DIR}/{stem}.npy" for stem in plan}},
        "markers": marker_files,
        "shortcut_marker_share": dict(SHORTCUT_MARKER_SHARE) if shift == "shortcut" else None,
        "images_per_patient": int(images_per_patient),
        "groups": SIDECAR if images_per_patient > 1 else None,
    }
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    files.write_text(out / "phantoms.json", text)
    return out
