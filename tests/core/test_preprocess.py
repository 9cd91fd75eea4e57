"""Tests of blip_core.preprocess: parity with transformers, mode conversion, refusals, fast path."""

from __future__ import annotations

import io
import os
import resource
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from blip_core import preprocess as P
from blip_core.errors import BadImageError, BadInputError

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def natural_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """[h, w, 3] uint8 that looks more like a photo than noise: smooth colour fields, texture,
    a hard-edged rectangle and a dark line."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float64)
    img = np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
    img[h // 4 : h // 2, w // 4 : w // 2] = 255
    diag = np.arange(min(h, w))
    img[diag, diag] = 0
    return img


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched to claim width x height (CRC fixed up).

    PIL reads the size from the header only, so nothing close to width * height bytes is ever
    allocated unless something calls .load().
    """
    data = bytearray(encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    assert data[12:16] == b"IHDR"  # 8-byte signature, then length(4) + type(4) + 13 data bytes
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def oracle_processor(size: int):
    """transformers' BLIP processor, the reference we must match (PIL backend)."""
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "BlipImageProcessorPil", None) or transformers.BlipImageProcessor
    return cls(size={"height": size, "width": size})


def oracle_convert_to_rgb(img: Image.Image) -> np.ndarray:
    image_transforms = pytest.importorskip("transformers.image_transforms")
    return np.asarray(image_transforms.convert_to_rgb(img, return_numpy=True))


# --------------------------------------------------------------------------------------------
# Parity with transformers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [224, 384])
@pytest.mark.parametrize("hw", [(480, 640), (1080, 1920), (384, 384), (37, 500), (1, 1)])
def test_pixel_values_match_transformers(size, hw):
    img = Image.fromarray(natural_image(*hw))
    expected = oracle_processor(size)(img, return_tensors="pt")["pixel_values"]
    got = P.pixel_values(img, size)
    assert got.shape == (1, 3, size, size) and got.dtype == torch.float32 and got.is_contiguous()
    # Measured: 4.8e-7 at worst (float32 rounding of the fused multiply-subtract).
    assert (got - expected).abs().max().item() < 1e-5


def test_rgba_and_palette_images_match_transformers():
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (60, 90, 4), dtype=np.uint8))
    palette = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    for img in (rgba, palette, rgba.convert("LA")):
        expected = oracle_processor(384)(img, return_tensors="pt")["pixel_values"]
        assert (P.pixel_values(img, 384) - expected).abs().max().item() < 1e-5


def test_pixel_values_batch_stacks_pixel_values():
    images = [natural_image(50, 80, seed=s) for s in range(3)]
    batch = P.pixel_values_batch(images, 224)
    assert batch.shape == (3, 3, 224, 224)
    for i, img in enumerate(images):
        assert torch.equal(batch[i], P.pixel_values(img, 224)[0])
    assert torch.equal(P.pixel_values_batch(np.stack(images), 224), batch)  # [B, H, W, 3] array


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def test_all_source_kinds_give_the_same_image(tmp_path):
    arr = natural_image(30, 40)
    png = encode(Image.fromarray(arr), "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(png)
    for source in (str(path), path, png, bytearray(png), memoryview(png), Image.fromarray(arr), arr):
        img = P.load_image(source)
        assert img.mode == "RGB" and img.size == (40, 30)
        assert np.array_equal(np.asarray(img), arr), type(source)


def test_grey_rgba_and_strided_arrays():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(np.asarray(P.load_image(grey))[..., 1], grey)
    assert np.array_equal(np.asarray(P.load_image(grey[..., None])), np.asarray(P.load_image(grey)))
    rgba = np.zeros((2, 2, 4), np.uint8)  # fully transparent black -> white
    assert (np.asarray(P.load_image(rgba)) == 255).all()
    bgr = natural_image(20, 30)
    rgb_view = bgr[:, ::-1, ::-1]  # negative strides, not contiguous
    assert np.array_equal(np.asarray(P.load_image(rgb_view)), rgb_view)


def test_one_pixel_image():
    out = P.pixel_values(np.array([[[255, 0, 0]]], np.uint8), 384)
    assert out.shape == (1, 3, 384, 384)
    expected_red = (1 - P.CLIP_MEAN[0]) / P.CLIP_STD[0]
    assert out[0, 0].sub(expected_red).abs().max() < 1e-5  # a constant image stays constant


def test_exif_orientation_is_applied_once():
    # 40 wide x 20 high: left half red, right half blue. Orientation 6 = "rotate 90 degrees
    # clockwise to display", so upright it is 20 wide x 40 high with red on top.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encode(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95)
    upright = P.load_image(jpeg)
    assert upright.size == (20, 40)
    top, bottom = np.asarray(upright)[5, 10].astype(int), np.asarray(upright)[35, 10].astype(int)
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60
    assert P.load_image(upright).size == (20, 40)  # the tag was removed: no second rotation


def test_malformed_exif_is_ignored(monkeypatch):
    img = Image.fromarray(natural_image(10, 12))
    jpeg = encode(img, "JPEG", exif=b"Exif\x00\x00garbage-not-a-tiff-header")
    assert P.load_image(jpeg).size == (12, 10)  # PIL parses this one as empty

    def broken_exif(self):  # what PIL does on some malformed blocks
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr(Image.Image, "getexif", broken_exif)
    assert P.load_image(jpeg).size == (12, 10)


# --------------------------------------------------------------------------------------------
# Mode conversion
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16bit_grey_is_scaled_not_clipped(mode):
    values = np.array([[0, 257, 128 * 257, 1000, 65535]], dtype=np.uint16)
    byte_order = ">u2" if mode == "I;16B" else "<u2"
    img = Image.frombytes(mode, (5, 1), values.astype(byte_order).tobytes())
    assert np.asarray(img.convert("L")).max() == 255 and np.asarray(img.convert("L"))[0, 3] == 255  # PIL clips
    rgb = np.asarray(P.to_rgb(img))
    assert rgb.shape == (1, 5, 3)
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 4, 255]  # round(v * 255 / 65535)
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_16bit_png_file_round_trip():
    values = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    png = encode(Image.fromarray(values), "PNG")
    img = P.load_image(png)
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert np.array_equal(np.asarray(img)[..., 0], expected)


def test_mode_I_is_treated_as_16bit():
    img = Image.fromarray(np.array([[-5, 0, 32768, 65535, 100000]], dtype=np.int32))
    assert img.mode == "I"
    assert np.asarray(P.to_rgb(img))[0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_float_mode():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert np.asarray(P.to_rgb(unit))[0, :, 0].tolist() == [0, 128, 255, 0]
    byte_range = Image.fromarray(np.array([[0.0, 127.6, 300.0, -4.0]], dtype=np.float32))
    assert np.asarray(P.to_rgb(byte_range))[0, :, 0].tolist() == [0, 128, 255, 0]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P+transparency", "RGB+transparency", "L+transparency"])
def test_transparency_composited_over_white_like_transformers(mode):
    rng = np.random.default_rng(7)
    rgba = Image.fromarray(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8))
    if mode in ("RGBA", "LA", "PA"):
        img = rgba.convert(mode)
    elif mode == "P+transparency":
        img = rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
        img.info["transparency"] = int(np.asarray(img)[0, 0])
    elif mode == "RGB+transparency":
        img = rgba.convert("RGB")
        img.info["transparency"] = tuple(int(v) for v in np.asarray(img)[0, 0])
    else:
        img = rgba.convert("L")
        img.info["transparency"] = int(np.asarray(img)[0, 0])
    got = np.asarray(P.to_rgb(img))
    assert np.array_equal(got, oracle_convert_to_rgb(img))
    if "transparency" in mode:
        assert (got[0, 0] == 255).all()  # the transparent colour became white


def test_premultiplied_alpha_modes():
    rgba = Image.new("RGBA", (2, 2), (200, 0, 0, 0))  # fully transparent -> white
    for mode in ("RGBa", "La"):
        assert (np.asarray(P.to_rgb(rgba.convert(mode if mode == "RGBa" else "LA").convert(mode))) == 255).all()


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "YCbCr", "HSV", "LAB", "RGBX"])
def test_other_modes_use_pil_convert(mode):
    src = Image.fromarray(natural_image(6, 7)).convert(mode)
    got = P.to_rgb(src)
    assert got.mode == "RGB" and np.array_equal(np.asarray(got), np.asarray(src.convert("RGB")))


def test_to_rgb_returns_rgb_unchanged_and_refuses_non_images():
    img = Image.new("RGB", (3, 3))
    assert P.to_rgb(img) is img
    with pytest.raises(BadInputError, match="PIL image"):
        P.to_rgb(np.zeros((3, 3, 3), np.uint8))


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def test_decompression_bomb_is_refused_without_allocating(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming_size(40000, 40000))  # 1.6 GP: 6.4 GB if decoded (PIL keeps RGB as 4 bytes/px)
    before = _peak_rss_mb()
    for source in (path, path.read_bytes()):
        with pytest.raises(BadImageError, match="bomb|megapixels") as info:
            P.pixel_values(source, 384)
        assert "bomb.png" in str(info.value) or isinstance(source, bytes)
    assert _peak_rss_mb() - before < 100


def test_our_limit_does_not_depend_on_pils(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's own check switched off
    before = _peak_rss_mb()
    with pytest.raises(BadImageError, match="40000x40000 = 1600 megapixels"):
        P.load_image(png_claiming_size(40000, 40000))
    assert _peak_rss_mb() - before < 100


def test_limit_below_pils_warning_threshold():
    side = int(P.MAX_PIXELS**0.5) + 1  # just above MAX_PIXELS, below PIL's ~89 MP warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and PIL does not even warn
        with pytest.raises(BadImageError, match="megapixels, above the 64 MP limit"):
            P.load_image(png_claiming_size(side, side))
    P.load_image(png_claiming_size(1, 1))  # sanity: the crafted PNG itself is valid


def test_between_pils_warning_and_error_thresholds():
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(BadImageError, match="megapixels"):
        P.load_image(png_claiming_size(10000, 10000))  # 100 MP: PIL warns, we refuse


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_bomb_warning_turned_into_error_is_still_a_bad_image():
    with pytest.raises(BadImageError, match="decompression bomb"):
        P.load_image(png_claiming_size(10000, 10000))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_fails_at_load(tmp_path, fmt):
    data = encode(Image.fromarray(natural_image(64, 64)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    Image.open(path).close()  # the header alone is fine: only a full decode notices
    with pytest.raises(BadImageError, match=f"cut.{fmt.lower()}.*corrupt or truncated"):
        P.load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_empty_file_and_empty_bytes(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(BadImageError, match="empty.jpg.*empty \\(0 bytes\\)"):
        P.load_image(path)
    with pytest.raises(BadImageError, match="empty"):
        P.load_image(b"")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n" * 10)
    with pytest.raises(BadImageError, match="notes.jpg.*not an image in a supported format"):
        P.load_image(path)


def test_formats_outside_the_allow_list_are_refused():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"  # would run Ghostscript
    with pytest.raises(BadImageError, match="supported format"):
        P.load_image(eps)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BadImageError, match="does not exist"):
        P.load_image(tmp_path / "nope.png")
    with pytest.raises(BadImageError, match="is a directory"):
        P.load_image(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(BadImageError, match="not a regular file"):
        P.load_image(fifo)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_real_permissions(tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(encode(Image.new("RGB", (2, 2)), "PNG"))
    path.chmod(0)
    with pytest.raises(BadImageError, match="permission denied"):
        P.load_image(path)


def test_unreadable_file(tmp_path, monkeypatch):
    # Runs also as root (which ignores chmod): make open() in the module fail as it would.
    path = tmp_path / "secret.png"
    path.write_bytes(encode(Image.new("RGB", (2, 2)), "PNG"))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(P, "open", denied, raising=False)
    with pytest.raises(BadImageError, match="secret.png.*permission denied"):
        P.load_image(path)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((4, 0), np.uint8), "empty"),
        (np.zeros((4, 5, 3), np.float32), "not uint8"),
        (np.zeros((4, 5, 3), np.uint16), "not uint8"),
        (np.zeros((4, 5, 3), bool), "not uint8"),
        (np.zeros((3, 4, 5), np.uint8), "wrong shape"),  # channels first
        (np.zeros((4, 5, 2), np.uint8), "wrong shape"),
        (np.zeros((2, 4, 5, 3), np.uint8), "wrong shape"),
        (np.zeros(7, np.uint8), "wrong shape"),
    ],
)
def test_bad_arrays(array, message):
    with pytest.raises(BadImageError, match=message):
        P.pixel_values(array, 384)


@pytest.mark.parametrize("source", [42, None, [1, 2, 3], torch.zeros(3, 4, 4)])
def test_unsupported_source_types(source):
    with pytest.raises(BadInputError, match="unsupported image source"):
        P.load_image(source)


@pytest.mark.parametrize("size", [0, -1, 3.5, True, "384", P.MAX_IMAGE_SIZE + 1])
def test_bad_image_size(size):
    with pytest.raises(BadInputError, match="image_size"):
        P.pixel_values(np.zeros((4, 4, 3), np.uint8), size)


def test_batch_errors_name_the_image(tmp_path):
    good = natural_image(8, 8)
    with pytest.raises(BadImageError, match="image 1 of the batch.*does not exist"):
        P.pixel_values_batch([good, tmp_path / "missing.png"], 64)
    for bad in ([], "photo.jpg", good, Image.new("RGB", (2, 2)), 5):
        with pytest.raises(BadInputError):
            P.pixel_values_batch(bad, 64)


def test_pil_global_state_is_untouched(tmp_path):
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    P.pixel_values(natural_image(10, 10), 32)
    with pytest.raises(BadImageError):
        P.load_image(png_claiming_size(40000, 40000))
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --------------------------------------------------------------------------------------------
# Camera fast path
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(1080, 1920), (720, 1280), (480, 640), (240, 320), (100, 3000), (20, 30)])
def test_frame_path_equals_the_pil_path(hw):
    frame = natural_image(*hw)
    got = P.frame_to_array(frame, 384)
    assert got.shape == (1, 3, 384, 384) and got.dtype == np.float32 and got.flags.c_contiguous
    assert np.array_equal(got, P.pixel_array(frame, 384))


_FRAME_DIGEST = """
import hashlib, sys
import numpy as np
{first}
from blip_core import preprocess as P
frame = (np.random.default_rng(3).random((720, 1280, 3)) * 255).astype(np.uint8)
frame[100:300, 200:700] = 255
print("torch" in sys.modules, hashlib.sha256(P.frame_to_array(frame, 384).tobytes()).hexdigest())
"""


def test_one_frame_gives_one_array_whatever_the_process_imported():
    """torch's resize (SIMD on AVX2) was taken whenever torch was loaded: an int8 model saw other
    pixels in a process that also held an fp32 model. Now: the same array with and without torch."""
    import subprocess
    import sys

    def digest(first: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", _FRAME_DIGEST.format(first=first)], capture_output=True,
                              text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split()

    without, with_torch = digest(""), digest("import torch")
    assert without[0] == "False" and with_torch[0] == "True"
    assert without[1] == with_torch[1]


def test_numpy_and_torch_preprocessing_agree_bit_for_bit():
    frame = natural_image(60, 80)
    assert np.array_equal(P.pixel_array(frame, 32), P.pixel_values(frame, 32).numpy())
    assert np.array_equal(P.frame_to_array(frame, 32), P.frame_to_pixels(frame, 32).numpy())
    assert P.pixel_array(frame, 32).flags.c_contiguous and P.pixel_array(frame, 32).dtype == np.float32


def test_frame_to_pixels_read_only_and_strided_frames():
    frame = natural_image(60, 80)
    expected = P.frame_to_pixels(frame, 64)
    read_only = frame.copy()
    read_only.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch would warn about a non-writable array
        assert torch.equal(P.frame_to_pixels(read_only, 64), expected)
    bgr = np.ascontiguousarray(frame[..., ::-1])
    assert torch.equal(P.frame_to_pixels(bgr[..., ::-1], 64), expected)  # negative-stride view
    crop = frame[5:50, 10:70]  # positive strides, not contiguous: wrapped without a copy
    assert torch.equal(P.frame_to_pixels(crop, 64), P.frame_to_pixels(np.ascontiguousarray(crop), 64))
    assert P.frame_to_pixels(np.zeros((1, 1, 3), np.uint8), 384).shape == (1, 3, 384, 384)


@pytest.mark.parametrize("shape", [(30, 40), (30, 40, 1), (30, 40, 4)])
def test_frame_to_pixels_other_layouts_take_the_pil_path(shape):
    frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert torch.equal(P.frame_to_pixels(frame, 64), P.pixel_values(frame, 64))


@pytest.mark.parametrize(
    "frame, error, message",
    [
        (np.zeros((4, 4, 3), np.float32), BadImageError, "not uint8"),
        (np.zeros((0, 4, 3), np.uint8), BadImageError, "empty"),
        (np.zeros((4, 4, 2), np.uint8), BadImageError, "wrong shape"),
        (np.broadcast_to(np.zeros(3, np.uint8), (8001, 8001, 3)), BadImageError, "megapixels"),  # no memory
        (Image.new("RGB", (4, 4)), BadInputError, "numpy array"),
    ],
)
def test_frame_to_pixels_refusals(frame, error, message):
    with pytest.raises(error, match=message):
        P.frame_to_pixels(frame, 64)


# --------------------------------------------------------------------------------------------
# Thread safety
# --------------------------------------------------------------------------------------------


def test_concurrent_calls_match_sequential(tmp_path):
    sources = []
    for i in range(8):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(encode(Image.fromarray(natural_image(120, 160, seed=i)), "JPEG"))
        sources.append(path)
    frames = [natural_image(90, 120, seed=i) for i in range(8)]
    sequential = [P.pixel_values(s, 96) for s in sources] + [P.frame_to_pixels(f, 96) for f in frames]
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [pool.submit(P.pixel_values, s, 96) for s in sources]
        jobs += [pool.submit(P.frame_to_pixels, f, 96) for f in frames]
        concurrent = [job.result() for job in jobs]
    assert all(torch.equal(a, b) for a, b in zip(sequential, concurrent))


def test_module_has_no_mutable_caches():
    # Constants only: the normalisation tensors must not be modified in place by any call.
    scale, offset = P._SCALE.copy(), P._OFFSET.copy()
    P.pixel_values(natural_image(10, 10), 16)
    P.frame_to_pixels(natural_image(10, 10), 16)
    assert np.array_equal(scale, P._SCALE) and np.array_equal(offset, P._OFFSET)
    assert isinstance(P.SUPPORTED_FORMATS, tuple) and "JPEG" in P.SUPPORTED_FORMATS


def test_source_path_type_is_path_like(tmp_path):
    path = tmp_path / "p.bmp"
    Image.new("RGB", (3, 2), (1, 2, 3)).save(path)
    assert isinstance(path, Path) and P.load_image(path).getpixel((0, 0)) == (1, 2, 3)
