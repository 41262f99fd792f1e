"""Pixel plumbing shared by every source: checked conversion to uint8, Pillow resizing, image-file decoding and
header checks that read no pixels. DICOM and the scaling of 12/16-bit pixels live in xferlab.data.hospital.

Images are uint8 H×W (grayscale) or 3×H×W (RGB, channel-first); batches add a leading N.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from xferlab.data.hospital import MAX_IMAGE_PIXELS, declared_bits, dicom_header, is_dicom, read_dicom, wide_to_uint8
from xferlab.errors import XferlabError

# Bilinear with Pillow's support scaling is antialiased when shrinking (the same filter as torchvision's
# antialias=True default), and it does not ring like LANCZOS on the hard edges of X-ray collimation.
RESAMPLE = Image.Resampling.BILINEAR

# A JPEG read for a known target side decodes through Pillow's draft mode (libjpeg scales the DCT by 1/2, 1/4 or 1/8
# while decoding) to no less than this many times the target, so the antialiased resize that follows still shrinks
# it at least that much. Measured on the 300 kermany-sample radiographs (399-2572 px) resized to 224 / 256 / 512 px:
# against a full decode, mean absolute difference 0.15 / 0.13 / 0.005 grey levels, 99.9th percentile 4 / 4 / 1, the
# largest 55 / 42 / 32 (on hard edges such as burned-in letters); decoding and resizing at 224 px 1.8x faster (153
# against 83 images/s on one core).
# tests/data/test_images.py holds every file to DRAFT_MEAN_TOLERANCE and DRAFT_P999_TOLERANCE.
DRAFT_MARGIN = 2
DRAFT_MEAN_TOLERANCE = 0.5
DRAFT_P999_TOLERANCE = 8

# Float arrays are converted in slices of about this many elements so no full-size float temporary is made.
_CHUNK_ELEMENTS = 1 << 22

_GRAY_MODES = ("1", "L", "LA", "La")
_WIDE_INT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_SINGLE_CHANNEL_MODES = (*_GRAY_MODES, *_WIDE_INT_MODES, "F")  # _decode makes these H×W whatever the pixels

# EXIF Orientation values (TIFF 6.0 tag 274) that swap width and height: transposed and 90°/270° rotations.
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112

T = TypeVar("T")


def _row_chunks(array: np.ndarray) -> Iterator[slice]:
    """Slices along axis 0 covering about _CHUNK_ELEMENTS elements each."""
    if array.ndim == 0:
        yield slice(None)
        return
    per_row = max(1, int(np.prod(array.shape[1:])))
    step = max(1, _CHUNK_ELEMENTS // per_row)
    for start in range(0, array.shape[0], step):
        yield slice(start, start + step)


def _float_range(array: np.ndarray, where: str) -> tuple[float, float]:
    """Min and max of a float array, chunk by chunk; NaN or inf is an error."""
    lo, hi = np.inf, -np.inf
    for rows in _row_chunks(array):
        chunk = array[rows]
        if not np.isfinite(chunk).all():
            raise XferlabError(
                f"{where}: pixel values contain NaN or infinity; clean or re-export the images with finite values"
            )
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    return lo, hi


def _floats_to_uint8(array: np.ndarray, scale: float) -> np.ndarray:
    out = np.empty(array.shape, dtype=np.uint8)
    for rows in _row_chunks(array):
        chunk = array[rows] * scale if scale != 1.0 else array[rows]
        out[rows] = np.clip(np.rint(chunk), 0, 255)
    return out


def to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Convert loaded pixels to uint8, refusing anything whose meaning is not clear.

    uint8 passes through untouched (no copy). Other integers must lie in 0..255; bool becomes 0/255. Floats must be
    finite and lie in [0, 1] (scaled by 255) or in [0, 255] (rounded); [0, 1] wins when both hold, so an all-zero or
    all-one float array is read as [0, 1] data. `where` (a file name) prefixes every error.
    """
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if array.size == 0 and np.issubdtype(array.dtype, np.number):
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            raise XferlabError(
                f"{where}: integer pixels ({array.dtype}) range {lo}..{hi}, outside 0..255; "
                "rescale them to 0..255 (uint8) before loading"
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        lo, hi = _float_range(array, where)
        if lo >= 0.0 and hi <= 1.0:
            return _floats_to_uint8(array, 255.0)
        if lo >= 0.0 and hi <= 255.0:
            return _floats_to_uint8(array, 1.0)
        raise XferlabError(
            f"{where}: float pixels range {lo:g}..{hi:g}; accepted ranges are [0, 1] or [0, 255]; "
            "rescale the images into one of them"
        )
    raise XferlabError(
        f"{where}: pixels have non-numeric dtype {array.dtype}; save them as uint8, another integer type or float"
    )


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize one uint8 H×W or C×H×W image (C is 1 or 3) to size×size or (H, W); same-size input is returned."""
    hw = _size_hw(size)
    if tuple(image.shape[-2:]) == hw:
        return image
    if image.ndim == 3:
        if image.shape[0] == 1:
            return resize_image(image[0], hw)[None]
        rgb = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
        return np.asarray(rgb.resize((hw[1], hw[0]), RESAMPLE)).transpose(2, 0, 1)
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((hw[1], hw[0]), RESAMPLE))


def resize_images(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an N×H×W or N×C×H×W uint8 batch to size×size (or (H, W)) with antialiased bilinear Pillow.

    Returns the input itself when it already has that size.
    """
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise XferlabError(
            f"resize_images needs an N×H×W or N×C×H×W uint8 batch, got {images.dtype} {images.shape}; "
            "convert with to_uint8 first"
        )
    hw = _size_hw(size)
    if tuple(images.shape[-2:]) == hw:
        return images
    out = np.empty(images.shape[:-2] + hw, dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = resize_image(image, hw)
    return out


def channels_first(array: np.ndarray, where: str) -> np.ndarray:
    """N×H×W, N×H×W×C or N×C×H×W (C = 1 or 3) -> N×H×W or N×3×H×W, as a view.

    A 4-D shape that reads both ways (N×3×H×3) is taken as channel-first, xferlab's own layout. The one reading of
    an array's layout for data sources, `predict`'s arrays and its .npy inputs (one image: channels_first(x[None])[0]).
    """
    if array.ndim == 4:
        first, last = array.shape[1] in (1, 3), array.shape[-1] in (1, 3)
        if last and not first:
            array = array.transpose(0, 3, 1, 2)
        if array.shape[1] == 1:
            return array[:, 0]
        if array.shape[1] == 3:
            return array
    elif array.ndim == 3:
        return array
    raise XferlabError(
        f"{where}: array shape {array.shape} is not images; expected N×H×W, N×H×W×C or N×C×H×W with C = 1 or 3 "
        "(3D volumes are not supported)"
    )


def gray_levels(images: np.ndarray) -> np.ndarray:
    """N×H×W float32 gray levels of N×H×W or N×C×H×W images: the mean of their channels.

    The one rule by which the audit (pixel statistics, near-copies, perceptual hashes) and explanations (the image a
    map is drawn over, a colour INPUT of `xferlab explain`) see a colour image as gray; the audit's measured numbers
    were taken with it. The model's own input rule is separate and stays in xferlab.data.batches.Preprocess (a
    one-channel backbone gets the channel mean too, computed per batch on the device). Gray images pass as they are
    (as float32).
    """
    x = np.asarray(images, dtype=np.float32)
    return x.mean(axis=1) if x.ndim == 4 else x


def gray_uint8(images: np.ndarray) -> np.ndarray:
    """gray_levels rounded to uint8 N×H×W (uint8 N×H×W images are returned as they are, not copied)."""
    if images.ndim == 3 and images.dtype == np.uint8:
        return images
    return np.round(gray_levels(images)).astype(np.uint8)


def _gray_or_rgb(pixels: np.ndarray) -> np.ndarray:
    """H×W×3 -> 3×H×W, or H×W when the three channels are identical.

    Gray content saved as RGB (common in X-ray JPEG collections) is kept single-channel: measured with Pillow 13 /
    libjpeg-turbo, gray pixels written as RGB JPEG decode with exactly equal channels at quality 75-95.
    """
    if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all():
        return np.ascontiguousarray(pixels[..., 0])
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def could_be_colour(mode: str) -> bool:
    """Whether a file of this Pillow mode may decode to 3×H×W.

    Single-channel modes never do; for RGB-like ones only decoding tells (gray content decodes gray: _gray_or_rgb).
    """
    return mode not in _SINGLE_CHANNEL_MODES


def _decode(image: Image.Image, where: str, path: str | os.PathLike | None,
            header: Image.Image | None = None) -> np.ndarray:
    """`header`: the image as opened, when `image` is a transposed copy that lost the file's tags (TIFF bit depth)."""
    if image.mode in _GRAY_MODES:
        return np.asarray(image.convert("L"))
    if image.mode in _WIDE_INT_MODES:
        # scaled by the bits the file uses, not by 65535: a 12-bit radiograph would otherwise stay nearly black
        return wide_to_uint8(np.asarray(image), declared_bits(header or image, path), where)
    if image.mode == "F":
        return to_uint8(np.asarray(image), where)
    return _gray_or_rgb(np.asarray(image.convert("RGB")))


def check_regular_file(path: str | os.PathLike, where: str | None = None) -> os.stat_result:
    """Refuse anything but a regular file (after following links) before it is opened: a FIFO or a device would block
    or read forever, a folder cannot be decoded, a symlink loop never resolves."""
    where = where or str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise XferlabError(f"image file {where} not found (or a symlink to nothing); check the path") from None
    except OSError as err:  # ELOOP (symlink loop), ENAMETOOLONG, EACCES, ...
        raise XferlabError(f"{where}: cannot open image ({err.strerror}); replace it by the image file") from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket")
        raise XferlabError(f"{where}: is {kind}, not an image file; list image files only")
    return info


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """(H, W) as displayed: EXIF orientations 5-8 swap the stored width and height."""
    # From what open() already parsed (getexif() would read on, and verify() must come straight after open).
    try:
        if image.info.get("exif"):
            exif = Image.Exif()
            exif.load(image.info["exif"])
            orientation = exif.get(_EXIF_ORIENTATION)
        else:
            orientation = getattr(image, "tag_v2", {}).get(_EXIF_ORIENTATION)  # TIFF keeps it as a plain tag
    except Exception:  # noqa: BLE001 - a broken EXIF block leaves the stored orientation
        orientation = None
    h, w = image.height, image.width
    return (w, h) if orientation in _SWAPPING_ORIENTATIONS else (h, w)


def check_header(image: Image.Image, where: str) -> None:
    """Refuse, from the header alone, what decoding would make dangerous or ambiguous: more than MAX_IMAGE_PIXELS
    (a decompression bomb decodes gigabytes from a few kilobytes) and files of several pages or frames."""
    pixels = image.width * image.height
    if pixels > MAX_IMAGE_PIXELS:
        raise XferlabError(
            f"{where}: header declares {image.width}×{image.height} = {pixels:,} pixels, over the limit of "
            f"{MAX_IMAGE_PIXELS:,} (a decompression bomb, or a scan far larger than any backbone input); downscale "
            "the image or remove the file"
        )
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise XferlabError(
            f"{where}: holds {frames} pages or frames (multi-page TIFF, animated GIF/PNG); xferlab reads one image "
            "per file: save each page as its own file, or keep the first"
        )


def _open(path: str | os.PathLike) -> Image.Image:
    """Image.open without Pillow's bomb warning: check_header refuses large images with a clearer message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _open_checked(path: str | os.PathLike, where: str) -> Image.Image:
    if check_regular_file(path, where).st_size == 0:
        raise XferlabError(f"{where}: empty file (0 bytes); replace it by the image or remove it")
    image = _open(path)
    try:
        check_header(image, where)
    except BaseException:
        image.close()
        raise
    return image


def decode_pil(image: Image.Image, where: str = "image") -> np.ndarray:
    """An open PIL image as read_image_file decodes a file: uint8 H×W or 3×H×W."""
    return _decode(image, where, getattr(image, "filename", None) or None)


def _draft(image: Image.Image, size: int | tuple[int, int] | None) -> None:
    """Let a JPEG decode at a reduced scale, no smaller than DRAFT_MARGIN × the target on either side (a square bound:
    EXIF orientation may still swap the sides)."""
    if size is None or image.format != "JPEG":
        return
    side = DRAFT_MARGIN * max(_size_hw(size))
    image.draft(image.mode, (side, side))


def read_image_file(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode one PNG/JPEG/TIFF/BMP/... file into uint8 H×W (grayscale) or 3×H×W (colour).

    `size`: the side (or (H, W)) the caller will resize the image to. A JPEG then decodes at a reduced scale where it
    is at least DRAFT_MARGIN times larger (_draft): fewer pixels decoded, the same pixels after the resize within
    DRAFT_MEAN_TOLERANCE / DRAFT_P999_TOLERANCE grey levels. The image is returned unresized either way.

    Modes: 1/L/LA -> gray; 16-bit (I;16*, I) -> gray scaled by the bits the file uses (hospital.wide_to_uint8);
    F -> gray by to_uint8's float rules; RGB/RGBA/P/CMYK/... -> RGB without alpha. RGB files whose channels are all
    equal come back as H×W. EXIF orientation is applied. DICOM files (hospital.is_dicom) go to hospital.read_dicom.
    Anything but a regular file, bombs and multi-frame files are refused before decoding (check_regular_file,
    check_header); unreadable or corrupt files raise XferlabError naming the file.
    """
    where = str(path)
    check_regular_file(path, where)  # before is_dicom reads a suffix-less file's marker: a FIFO would block
    if is_dicom(path):
        return read_dicom(path)
    try:
        with _open_checked(path, where) as image, warnings.catch_warnings():
            # Pillow warns about palette transparency given as bytes and about large images; both are handled here.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            _draft(image, size)
            image.load()
            return _decode(ImageOps.exif_transpose(image), where, path, header=image)
    except XferlabError:
        raise
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ... on broken files
        raise XferlabError(
            f"{where}: cannot read image ({type(err).__name__}: {err}); replace or remove the file"
        ) from None


def read_image_header(path: str | os.PathLike) -> tuple[tuple[int, int], bool]:
    """(H, W) as displayed (EXIF orientation applied) and whether the file may be colour (could_be_colour), from its
    header, without decoding pixels.

    Pillow's verify() also checks what it can without decoding (PNG: every chunk's checksum; most other formats:
    nothing), so damage only decoding reveals, such as a truncated JPEG, surfaces when the image is decoded. A file
    verify() rejects is decoded once to decide, so exactly the files read_image_file refuses are refused, with its
    message (a PNG missing only its end marker decodes fine).
    """
    check_regular_file(path)
    if is_dicom(path):
        return dicom_header(path)
    try:
        with _open_checked(path, str(path)) as image:
            size, mode = _oriented_size(image), image.mode
            image.verify()
        return size, could_be_colour(mode)
    except XferlabError:
        raise
    except Exception:  # noqa: BLE001 - decoding decides, and its error names the problem
        pixels = read_image_file(path)
        return (int(pixels.shape[-2]), int(pixels.shape[-1])), pixels.ndim == 3


def read_each(
    paths: Sequence[Path], read: Callable[[Path], T], skip_unreadable: bool, skipped: list[int]
) -> Iterator[tuple[int, T]]:
    """(i, read(paths[i])) for each file. When `read` raises XferlabError the error is re-raised with the
    skip_unreadable hint or, with skip_unreadable, the file's index is appended to `skipped` and it is left out."""
    for i, path in enumerate(paths):
        try:
            value = read(path)
        except XferlabError as err:
            if not skip_unreadable:
                raise XferlabError(f"{err} (or set data.skip_unreadable: true to skip unreadable files)") from None
            skipped.append(i)
            continue
        yield i, value


def _shape_report(shapes: Sequence[tuple[int, ...]], names: Sequence[str] | None) -> str:
    counts = Counter(shapes)
    parts = []
    for shape, k in counts.most_common(4):
        example = f", e.g. {names[shapes.index(shape)]}" if names is not None else ""
        parts.append(f"{'×'.join(map(str, shape))} ({k} image{'s' if k > 1 else ''}{example})")
    more = f" and {len(counts) - 4} more" if len(counts) > 4 else ""
    return "; ".join(parts) + more


def check_same_size(sizes: Sequence[tuple[int, int]], where: str, names: Sequence[str] | None = None) -> None:
    """Raise when the (H, W) sizes differ, listing the sizes found (with an example name each) and the fix."""
    sizes = [tuple(int(v) for v in s) for s in sizes]
    if len(set(sizes)) > 1:
        raise XferlabError(
            f"{where}: images differ in size: {_shape_report(sizes, names)}; "
            "pass --image-size S (or data.image_size) to resize them all to S×S"
        )


def check_file_sizes(paths: Sequence[Path], where: str) -> None:
    """check_same_size from the file headers alone, so a mixed-size folder fails before any pixel is decoded.

    Files whose header cannot be read are left out here; decoding reports them.
    """
    sizes, names = [], []
    for path in paths:
        try:
            check_regular_file(path)  # never open a FIFO or a device, even for its header
            if is_dicom(path):
                sizes.append(dicom_header(path)[0])
            else:
                with _open(path) as image:
                    check_header(image, str(path))  # a bomb's claimed size is not a size to compare
                    sizes.append(_oriented_size(image))
            names.append(str(path))
        except Exception:  # noqa: BLE001 - unreadable files are reported by read_image_file
            continue
    check_same_size(sizes, where, names)


def stack_images(
    images: Sequence[np.ndarray],
    where: str,
    image_size: int | None = None,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Stack uint8 H×W / 3×H×W images into one N×H×W or N×3×H×W batch.

    When any image is colour the grayscale ones are repeated to 3 channels. With `image_size` every image is resized
    to image_size×image_size first; without it all images must share one size, else the error lists the sizes found
    (with an example from `names`) and the fix.
    """
    if not images:
        raise XferlabError(f"{where}: no images to stack; check that the folder or manifest lists image files")
    if image_size is None:
        check_same_size([im.shape[-2:] for im in images], where, names)
    hw = _size_hw(image_size) if image_size is not None else tuple(images[0].shape[-2:])
    rgb = any(im.ndim == 3 for im in images)
    out = np.empty((len(images), 3, *hw) if rgb else (len(images), *hw), dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = resize_image(im, hw)  # an H×W image broadcasts into all three channels of an RGB slot
    return out


def concat_batches(batches: Sequence[np.ndarray], names: Sequence[str], where: str) -> np.ndarray:
    """Concatenate uint8 N×H×W / N×3×H×W batches into one preallocated array (gray ones become RGB when any is).

    Batches must share H×W; the error names the first two files that differ and the fix.
    """
    hw = tuple(batches[0].shape[-2:])
    for batch, name in zip(batches, names):
        if tuple(batch.shape[-2:]) != hw:
            raise XferlabError(
                f"{where}: {names[0]} holds {hw[0]}×{hw[1]} images but {name} holds "
                f"{batch.shape[-2]}×{batch.shape[-1]}; pass --image-size S (or data.image_size) to resize all to S×S"
            )
    rgb = any(b.ndim == 4 for b in batches)
    total = sum(len(b) for b in batches)
    out = np.empty((total, 3, *hw) if rgb else (total, *hw), dtype=np.uint8)
    start = 0
    for batch in batches:
        out[start:start + len(batch)] = batch[:, None] if rgb and batch.ndim == 3 else batch
        start += len(batch)
    return out


def describe_files(paths: Sequence[Path], limit: int = 3) -> str:
    """'a.png, b.png, c.png and 4 more' for messages about many files."""
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
