"""BLIP evaluation preprocessing: image source -> normalised pixels ``[1, 3, S, S]``, as a numpy
array (:func:`pixel_array`, :func:`frame_to_array`: what the int8 runtime uses, without torch) or
a torch tensor sharing its memory (:func:`pixel_values`, :func:`frame_to_pixels`).

The transform is BLIP's eval transform (and ``transformers.BlipImageProcessor``'s): squash the
image to ``S x S`` with PIL's bicubic filter (aspect ratio *not* kept, no crop), rescale by 1/255,
normalise with the CLIP mean/std. The PIL path (:func:`pixel_values`) reproduces the transformers
processor to ~1e-7 (float32 rounding only); :func:`frame_to_pixels` is a shorter path for camera
frames with the same result, bit for bit. One input gives one result whatever the process has
imported: an fp32 model (torch loaded) and an int8 one (no torch) see the same pixels.

Safety rules, because images come from users and the network:

* Sizes are checked from the *header*, before any pixel is decoded: more than :data:`MAX_PIXELS`
  is refused, so a 100-byte PNG that claims 40000 x 40000 costs nothing, and so is a side more
  than :data:`MAX_ASPECT_RATIO` times the other (a 64000000 x 1 strip is within the pixel limit,
  but resizing it took 15 s and 2.7 GB).
* Only common raster formats are decoded (:data:`SUPPORTED_FORMATS`). PIL would otherwise also
  try e.g. EPS (which runs Ghostscript) and a long tail of rarely audited decoders.
* Images are fully decoded (``.load()``) inside :func:`load_image`, so a truncated file fails
  here with a clear message rather than later inside the model code.
* Every user-caused failure is a :class:`~blip_core.errors.BadImageError` (bad image) or
  :class:`~blip_core.errors.BadInputError` (bad argument); no PIL/numpy exception escapes.

Global state: this module never modifies PIL's globals. ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
read as False (PIL's default; if some other code sets it True, PIL itself stops reporting
truncation). ``Image.MAX_IMAGE_PIXELS`` is left alone; our own limit is stricter and applies even
when it is ``None``. PIL still runs its own check inside ``Image.open``: a header claiming more
than ``Image.MAX_IMAGE_PIXELS`` (~89 MP) emits a ``DecompressionBombWarning`` just before we refuse
the image, and above twice that PIL raises ``DecompressionBombError``, which we turn into
``BadImageError``. Importing this module registers PIL's plugins for the supported formats (what
PIL does lazily on first use anyway).

Thread safety: no module state is written after import (the constants are read-only), so all
functions may run concurrently on different inputs. A PIL image passed in is loaded and read, never
modified, but a lazily opened one should not be shared across threads before it is loaded (PIL's
own rule). PIL's resize releases the GIL, so a thread pool does scale.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from numbers import Integral
from typing import Union

import numpy as np

# Import the decoders we accept so they register themselves in Image.OPEN (cheap, ~15 ms;
# ``Image.init()`` would import all ~45 plugins, ~50 ms). MPO (multi-picture JPEG from phones) is
# opened by the JPEG plugin.
from PIL import (  # noqa: F401  # noqa: F401
    BmpImagePlugin,
    ExifTags,
    GifImagePlugin,
    Image,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

try:  # Pillow >= 11.2 only
    from PIL import AvifImagePlugin  # noqa: F401
except ImportError:  # pragma: no cover - depends on the Pillow build
    pass

from blip_core.errors import BadImageError, BadInputError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "MAX_ASPECT_RATIO",
    "MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "frame_to_array",
    "frame_to_pixels",
    "load_image",
    "pixel_array",
    "pixel_values",
    "pixel_values_batch",
    "to_rgb",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Largest image we agree to decode: 8000 x 8000 = 64 MP. Decoding allocates width * height *
# bytes-per-pixel up front (64 MP RGBA = 256 MB, plus one copy for the RGB conversion), so this
# bounds the memory one request can make us spend; the 40000 x 40000 "bomb" would need 6.4 GB.
# It still admits every common camera output (48-50 MP phone sensors are 8000 x 6000 / 8160 x 6144)
# and is stricter than PIL's default (~89 MP warning, ~179 MP error) on purpose.
MAX_PIXELS = 8000 * 8000

# Most elongated image we agree to resize: 100:1. Resizing builds a filter table per axis of
# ~32 bytes per source pixel of that axis (PIL's bicubic), so
# within MAX_PIXELS the longest side (8000 * sqrt(100) = 80000 px) bounds it to ~2.6 MB; a
# 64000000 x 1 strip needed 2 GB and 15 s. Nothing is lost: BLIP squashes every image to a square,
# and at 100:1 the long side is already shrunk 100 times more than the short one. Panoramas
# (~10:1), web banners (728 x 90) and receipts fit with room.
MAX_ASPECT_RATIO = 100

# Largest accepted ``image_size``: a guard against typos (S=38400 would allocate 17 GB of floats).
MAX_IMAGE_SIZE = 4096

_WANTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF")
SUPPORTED_FORMATS: tuple[str, ...] = tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

# Normalisation as one multiply-subtract per element: (x / 255 - mean) / std = x * scale - offset.
# Computed in float64 and rounded once; differs from transformers' two-step float32 arithmetic
# by float32 rounding only (~2e-7). Shapes [1, 3, 1, 1] broadcast over [B, 3, S, S].
_SCALE = np.array([1.0 / (255.0 * s) for s in CLIP_STD], dtype=np.float64).astype(np.float32).reshape(1, 3, 1, 1)
_OFFSET = np.array([m / s for m, s in zip(CLIP_MEAN, CLIP_STD)], dtype=np.float64)
_OFFSET = _OFFSET.astype(np.float32).reshape(1, 3, 1, 1)
_SCALE.flags.writeable = _OFFSET.flags.writeable = False

_ALPHA_MODES = frozenset({"LA", "PA", "RGBA"})
_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}  # PIL's premultiplied-alpha modes -> straight alpha
_EXIF_TRANSPOSED = frozenset(range(2, 9))  # orientation 1 = upright; 2..8 need a flip/rotation


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_image(source: ImageSource) -> Image.Image:
    """Open/decode ``source`` into an RGB PIL image, upright according to its EXIF orientation.

    ``source`` may be a file path (``str`` / ``os.PathLike``), encoded image bytes (``bytes``,
    ``bytearray``, ``memoryview``), a PIL image (any mode; lazily opened ones are loaded here), or
    a numpy ``uint8`` array in RGB order: ``H x W x 3`` (RGB), ``H x W x 4`` (RGBA, composited over
    white), ``H x W`` or ``H x W x 1`` (grey). Float arrays are refused rather than guessed at
    (0..1 or 0..255?); convert with ``(a * 255).round().clip(0, 255).astype(np.uint8)``.

    The image is fully decoded before returning. A malformed EXIF block is ignored (the pixels
    are fine; only the orientation is unknown), as image viewers do.

    Raises:
        BadImageError: missing/unreadable/empty/corrupt/truncated file, not a supported image,
            more than :data:`MAX_PIXELS` pixels, more elongated than :data:`MAX_ASPECT_RATIO`:1,
            or an array of the wrong dtype/shape.
        BadInputError: ``source`` is of an unsupported type.
    """
    if isinstance(source, (str, os.PathLike)):
        return _load_file(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_bytes(bytes(source))
    if isinstance(source, Image.Image):
        return _finish(source, "the given PIL image")
    if isinstance(source, np.ndarray):
        return to_rgb(_array_to_image(source))
    raise BadInputError(
        f"unsupported image source of type {type(source).__name__}: pass a file path, encoded "
        "image bytes, a PIL image or an HxWx3 uint8 RGB numpy array"
    )


def _load_file(path: str | bytes) -> Image.Image:
    """Decode the image file at ``path``; every filesystem problem becomes a BadImageError."""
    what = f"image file {os.fsdecode(path)!r}"
    st = _stat_regular_file(path, what)
    if st.st_size == 0:
        raise BadImageError(f"{what} is empty (0 bytes): it was not fully written or copied; re-export it")
    try:
        fp = open(path, "rb")  # noqa: SIM115 - closed below; PIL reads lazily from it
    except PermissionError as e:
        raise BadImageError(f"{what} cannot be read (permission denied): fix its permissions, e.g. chmod +r") from e
    except OSError as e:
        raise BadImageError(f"{what} cannot be opened ({e.strerror or e}): check the path and the disk") from e
    with fp:
        # Everything that touches the file happens before it is closed: _finish loads all pixels.
        return _finish(_open(fp, what), what)


def _stat_regular_file(path: str | bytes, what: str) -> os.stat_result:
    """``os.stat(path)``, refusing anything that is not a regular file (dirs, FIFOs, devices)."""
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise BadImageError(f"{what} does not exist: check the path") from e
    except PermissionError as e:
        raise BadImageError(f"{what} cannot be accessed (permission denied): fix the permissions of its folder") from e
    except OSError as e:  # ENOTDIR, ENAMETOOLONG, ELOOP, EIO ...
        raise BadImageError(f"{what} cannot be accessed ({e.strerror or e}): check the path") from e
    if stat.S_ISDIR(st.st_mode):
        raise BadImageError(f"{what} is a directory, not an image: pass the path of an image file")
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO or a device could block forever or read without end.
        raise BadImageError(f"{what} is not a regular file (a pipe, socket or device): pass an image file")
    return st


def _load_bytes(data: bytes) -> Image.Image:
    """Decode encoded image bytes (the contents of a JPEG/PNG/... file)."""
    what = f"image data ({len(data)} bytes)"
    if not data:
        raise BadImageError("image data is empty (0 bytes): pass the contents of an image file")
    return _finish(_open(io.BytesIO(data), what), what)


def _open(fp: io.IOBase, what: str) -> Image.Image:
    """Identify the format and read the header only (PIL decodes pixels lazily)."""
    with _decoding(what):
        try:
            return Image.open(fp, formats=SUPPORTED_FORMATS)
        except Image.UnidentifiedImageError as e:
            raise BadImageError(
                f"{what} is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)}): "
                "check that it is really an image file (a wrong extension does not matter)"
            ) from e


def _finish(img: Image.Image, what: str) -> Image.Image:
    """Size check from the header, full decode, EXIF orientation, conversion to RGB."""
    _check_size(img.size, what)  # before .load(): the header size costs no memory
    with _decoding(what):
        img.load()  # forces the full decode so truncation/corruption surfaces here
    img = _apply_exif_orientation(img)
    return _to_rgb(img, what)


def _check_size(size: tuple[int, int], what: str) -> None:
    """Refuse an empty image, one above :data:`MAX_PIXELS` or one more elongated than
    :data:`MAX_ASPECT_RATIO`: from its size alone, before any pixel is decoded or resized."""
    width, height = size
    if width <= 0 or height <= 0:
        raise BadImageError(f"{what} has no pixels ({width}x{height}): pass a non-empty image")
    if width * height > MAX_PIXELS:
        raise BadImageError(
            f"{what} is {width}x{height} = {width * height / 1e6:.0f} megapixels, above the "
            f"{MAX_PIXELS / 1e6:.0f} MP limit (blip_core.preprocess.MAX_PIXELS; the model sees it at "
            "a few hundred pixels anyway): downscale it first"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise BadImageError(
            f"{what} is {width}x{height}, more elongated than {MAX_ASPECT_RATIO}:1 (blip_core.preprocess."
            "MAX_ASPECT_RATIO; the model squashes every image to a square, so nothing of it would survive): "
            "crop it to the part to describe"
        )


@contextmanager
def _decoding(what: str) -> Iterator[None]:
    """Turn any exception raised inside a PIL decode into a BadImageError naming ``what``.

    PIL's decoders raise a zoo of types for bad data (OSError, SyntaxError, ValueError, EOFError,
    struct.error, zlib.error, IndexError ...), so the block this wraps must contain PIL calls only.
    """
    try:
        yield
    except (BadImageError, BadInputError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # The warning arrives here only when the application turned warnings into errors.
        raise BadImageError(
            f"{what} declares an enormous size (a possible decompression bomb: {e}); "
            f"refusing to decode images above {MAX_PIXELS / 1e6:.0f} MP: downscale it first"
        ) from e
    except MemoryError as e:
        raise BadImageError(f"{what} does not fit in memory when decoded: downscale it first") from e
    except Exception as e:
        raise BadImageError(
            f"{what} is corrupt or truncated ({type(e).__name__}: {e}): re-download or re-export it"
        ) from e


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip ``img`` upright per its EXIF Orientation tag; returns ``img`` itself if upright.

    ``ImageOps.exif_transpose`` also deletes the tag from the result, so loading an already loaded
    image again does not rotate it twice. It is only called when a transposition is needed
    because otherwise it returns a full copy.
    """
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation in _EXIF_TRANSPOSED:
            return ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF: keep the pixels as stored (what image viewers do)
        pass
    return img


def _array_to_image(arr: np.ndarray) -> Image.Image:
    """Wrap an ``H x W [x C]`` uint8 array (RGB order) as a PIL image (L, RGB or RGBA)."""
    what = f"image array of shape {arr.shape} and dtype {arr.dtype}"
    if arr.size == 0:
        raise BadImageError(f"{what} is empty: pass an array with at least one pixel")
    if arr.dtype != np.uint8:
        raise BadImageError(
            f"{what} is not uint8: pass 8-bit RGB values 0..255, e.g. "
            "(a * 255).round().clip(0, 255).astype(np.uint8) for floats in [0, 1]"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise BadImageError(
            f"{what} has the wrong shape: expected HxWx3 (RGB), HxWx4 (RGBA) or HxW (grey), "
            "channels last; for CxHxW use a.transpose(1, 2, 0)"
        )
    _check_size((arr.shape[1], arr.shape[0]), what)
    # fromarray infers L / RGB / RGBA from the shape of a uint8 array.
    return Image.fromarray(np.ascontiguousarray(arr))


# --------------------------------------------------------------------------------------------
# Mode conversion
# --------------------------------------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to RGB (returns ``img`` itself if already plain RGB).

    * Transparency (LA, PA, RGBA, premultiplied La/RGBa, or a ``transparency`` entry as in P/L/RGB
      PNGs with tRNS) is composited over white, exactly like transformers' ``convert_to_rgb``.
    * 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) is scaled by 255/65535 with rounding.
      PIL's own ``convert`` clips instead (every value above 255 becomes white). Mode ``I``
      (32-bit int, what PIL used for 16-bit PNGs before 10.x) is treated as 16-bit too: clipped to
      0..65535, then scaled the same way.
    * ``F`` (32-bit float) has no standard range: if every finite value lies in [0, 1] it is taken
      as 0..1 (TIFF/scientific convention), else as 0..255 (PIL's convention); NaN becomes 0.
    * L, P, 1, CMYK (naive, no ICC profile, like PIL), YCbCr, HSV, LAB, RGBX: PIL's ``convert``.

    Raises:
        BadInputError: ``img`` is not a PIL image.
        BadImageError: the image cannot be decoded or its mode cannot be converted.
    """
    if not isinstance(img, Image.Image):
        raise BadInputError(f"to_rgb expects a PIL image, got {type(img).__name__}")
    return _to_rgb(img, f"PIL image of mode {img.mode}")


def _to_rgb(img: Image.Image, what: str) -> Image.Image:
    with _decoding(what):  # convert() decodes a lazily opened image
        if img.mode == "I" or img.mode.startswith("I;16"):
            return _gray_to_rgb(_scale_16bit(np.asarray(img)))
        if img.mode == "F":
            return _gray_to_rgb(_scale_float(np.asarray(img)))
        if img.mode in _PREMULTIPLIED:
            img = img.convert(_PREMULTIPLIED[img.mode])
        if img.mode in _ALPHA_MODES or img.info.get("transparency") is not None:
            return _composite_on_white(img)
        if img.mode == "RGB":
            return img
        return img.convert("RGB")


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Alpha-composite over an opaque white background (same steps as transformers)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """[H, W] 16-bit samples (uint16 of any byte order, or int32) -> [H, W] uint8, rounded."""
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)


def _scale_float(values: np.ndarray) -> np.ndarray:
    """[H, W] float samples -> [H, W] uint8 (range guessed as documented in :func:`to_rgb`)."""
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    finite = values[np.isfinite(values)]
    if finite.size == 0 or (finite.min() >= 0.0 and finite.max() <= 1.0):
        v = v * 255.0
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(gray).convert("RGB")


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------


def pixel_array(source: ImageSource, image_size: int) -> np.ndarray:
    """Preprocess one image like ``BlipImageProcessor(size={"height": S, "width": S})``.

    Args:
        source: anything :func:`load_image` accepts.
        image_size: ``S``, the model's input resolution (384 for BLIP base captioning, 480 VQA).

    Returns:
        float32 array ``[1, 3, S, S]``, contiguous, CLIP-normalised.
    """
    size = _check_image_size(image_size)
    return _pil_to_array(load_image(source), size)


def pixel_values(source: ImageSource, image_size: int):
    """:func:`pixel_array` as a torch tensor ``[1, 3, S, S]`` (sharing its memory)."""
    import torch  # here, not at import: the int8 runtime preprocesses without torch

    return torch.from_numpy(pixel_array(source, image_size))


def pixel_values_batch(sources: Iterable[ImageSource], image_size: int):
    """Preprocess several images; ``sources`` is a list (or any iterable) of sources, or a
    ``[B, H, W, 3]`` uint8 array.

    Returns:
        float32 tensor ``[B, 3, S, S]``. A bad image raises a BadImageError naming its index.
    """
    import torch

    size = _check_image_size(image_size)
    items = _as_source_list(sources)
    out = np.empty((len(items), 3, size, size), np.float32)  # filled in place: no second copy as with stack
    for i, source in enumerate(items):
        try:
            out[i] = pixel_array(source, size)[0]
        except BadImageError as e:
            raise BadImageError(f"image {i} of the batch: {e}") from e
    return torch.from_numpy(out)


def _as_source_list(sources: Iterable[ImageSource]) -> list[ImageSource]:
    # A single source is iterable too (a path iterates characters, an HxWx3 array rows), which
    # would produce baffling errors; say what is expected instead.
    single = (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)
    if isinstance(sources, single) or (isinstance(sources, np.ndarray) and sources.ndim != 4):
        raise BadInputError(
            "pixel_values_batch expects a list of images (or a [B, H, W, 3] array); "
            "for a single image use pixel_values"
        )
    try:
        items = list(sources)
    except TypeError as e:
        raise BadInputError(f"pixel_values_batch expects a list of images, got {type(sources).__name__}") from e
    if not items:
        raise BadInputError("pixel_values_batch got an empty list of images: pass at least one")
    return items


def _check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, Integral):
        raise BadInputError(f"image_size must be an int (e.g. 384), got {type(image_size).__name__}")
    if not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise BadInputError(f"image_size must be between 1 and {MAX_IMAGE_SIZE}, got {image_size}")
    return int(image_size)


def _pil_to_array(img: Image.Image, size: int) -> np.ndarray:
    """RGB PIL image -> [1, 3, S, S] float32: PIL bicubic resize (as transformers) + normalise."""
    resized = img.resize((size, size), Image.Resampling.BICUBIC)
    return _normalize(np.asarray(resized).transpose(2, 0, 1)[None])


def _normalize(u8: np.ndarray) -> np.ndarray:
    """[B, 3, S, S] uint8 (any memory layout) -> contiguous [B, 3, S, S] float32, CLIP-normalised
    (the same two float32 roundings as ``x * scale - offset`` in torch)."""
    out = np.ascontiguousarray(u8, dtype=np.float32)
    out *= _SCALE
    out -= _OFFSET
    return out


# --------------------------------------------------------------------------------------------
# Camera fast path
# --------------------------------------------------------------------------------------------


def frame_to_array(frame: np.ndarray, image_size: int) -> np.ndarray:
    """Fast :func:`pixel_array` for a camera frame: ``[H, W, 3]`` uint8 RGB -> ``[1, 3, S, S]``.

    The resize is PIL's bicubic, as in :func:`pixel_array`, so both give the same array bit for
    bit, torch loaded or not. Faster resizes were measured and not taken, on a 2-core Xeon
    (AVX-512, 2 torch threads), resize + normalise of a synthetic photo-like frame to 384 x 384,
    best of 40 runs; "max |d|" is the largest difference to :func:`pixel_values` after
    normalisation (one 8-bit level = 0.015):

        ======================  =====================  =====================
        method                  1920x1080: ms, max|d|  640x480: ms, max|d|
        ======================  =====================  =====================
        PIL bicubic (= path)    12.4   0               2.7   0               <- chosen
        cv2 INTER_AREA           3.8   0.40            1.3   0.41
        cv2 INTER_CUBIC          0.74  2.90            0.42  1.08
        cv2 INTER_LINEAR         0.48  2.49            0.39  0.41
        torch bicubic AA, u8     1.6   0.015           0.66  0.015
        ======================  =====================  =====================

    cv2's modes are not PIL's filter: INTER_CUBIC/LINEAR do not antialias when shrinking (up to
    ~190 levels off on edges) and INTER_AREA is a box filter. torch's uint8 kernel is a port of
    PIL's, SIMD on AVX2 only, but not bit-identical: 1 level off in ~0.3 % of pixels at 1080p,
    8 levels for extreme scaling such as a 100x3000 strip. It was once used whenever an fp32 model
    had loaded torch, so the same model saw different pixels depending on what the process had
    imported (a caption could change with an unrelated import); ~10 ms per 1080p frame is the
    price of one result. An int8 model never imports torch at all.

    ``frame`` is read, not modified; a non-contiguous view (a crop, or a negative-stride
    ``[..., ::-1]`` BGR->RGB view) is copied to a contiguous array first.
    Other arrays (grey, RGBA) take the :func:`pixel_array` path, which also refuses bad ones.
    """
    size = _check_image_size(image_size)
    if not isinstance(frame, np.ndarray):
        raise BadInputError(f"frame_to_pixels expects a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        return _pil_to_array(load_image(frame), size)
    what = f"camera frame of shape {frame.shape}"
    if frame.size == 0:
        raise BadImageError(f"{what} is empty: the camera returned no pixels")
    _check_size((frame.shape[1], frame.shape[0]), what)
    return _resize_frame(frame, size)


def frame_to_pixels(frame: np.ndarray, image_size: int):
    """:func:`frame_to_array` as a torch tensor ``[1, 3, S, S]``."""
    import torch

    return torch.from_numpy(frame_to_array(frame, image_size))


def _resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [1, 3, S, S] float32 via PIL, identical to :func:`pixel_array`."""
    return _pil_to_array(Image.fromarray(np.ascontiguousarray(frame)), size)

