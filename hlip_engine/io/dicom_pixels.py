"""Pixel data -> float32 slices in real-world units (HU for CT), as pure functions over headers.

Why two paths: uncompressed little-endian data (most PACS exports) is read with one ``readinto`` at the
offset the header pass found, with no second parse of the file; everything else (JPEG, JPEG-LS,
JPEG 2000, RLE, big endian, deflate) goes through pydicom's decoders and the installed pylibjpeg plugins.
Rescale follows RescaleSlope (0028,1053) / RescaleIntercept (0028,1052), per slice.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .dicom_headers import SliceHeader
from .dicom_mosaic import tile_of


class PixelError(Exception):
    """One image whose pixels cannot be read; the message says why (the caller adds the file)."""


def stored_dtype(h: SliceHeader) -> np.dtype:
    if h.bits_allocated not in (8, 16, 32):
        raise PixelError(f"unsupported BitsAllocated {h.bits_allocated}")
    kind = "i" if h.pixel_representation == 1 else "u"
    return np.dtype(f"<{kind}{h.bits_allocated // 8}")


def rescale(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Modality LUT: stored value -> real-world value (CT: Hounsfield units)."""
    out = stored.astype(np.float32, copy=False)
    if slope != 1.0:
        out = out * np.float32(slope)
    if intercept != 0.0:
        out = out + np.float32(intercept)
    return out


def _into(out: np.ndarray, stored: np.ndarray, slope: float, intercept: float) -> None:
    """out = stored * slope + intercept, without temporaries (a 512x512x300 CT is 300 MB of float32)."""
    if slope == 1.0:
        np.copyto(out, stored, casting="unsafe")
    else:
        np.multiply(stored, np.float32(slope), out=out, casting="unsafe")
    if intercept != 0.0:
        out += np.float32(intercept)


def _fast_read(h: SliceHeader, out: np.ndarray, scratch: dict) -> bool:
    """Read native little-endian pixels straight into ``out`` (rows, cols). False when not applicable."""
    if h.pixel_offset is None or h.samples_per_pixel != 1 or h.bits_allocated not in (8, 16, 32):
        return False
    if h.pixel_representation == 1 and h.bits_stored != h.bits_allocated:
        return False  # needs sign extension: let pydicom do it
    dtype = stored_dtype(h)
    frame_bytes = h.rows * h.columns * dtype.itemsize
    frame = h.frame or 0
    if h.pixel_length is not None and h.pixel_length < frame_bytes * (frame + 1):
        raise PixelError(f"pixel data too short ({h.pixel_length} bytes for {h.rows}x{h.columns}"
                         f"x{max(h.n_frames, 1)} at {h.bits_allocated} bits)")
    key = (dtype.str, h.rows, h.columns)
    buf = scratch.get(key)
    if buf is None:
        buf = scratch[key] = np.empty((h.rows, h.columns), dtype=dtype)  # reused: no page faults per slice
    fd = os.open(h.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        got = os.preadv(fd, [memoryview(buf).cast("B")], h.pixel_offset + frame * frame_bytes) \
            if hasattr(os, "preadv") else _pread_fallback(fd, buf, h.pixel_offset + frame * frame_bytes)
    finally:
        os.close(fd)
    if got != frame_bytes:
        raise PixelError(f"file truncated: {got} of {frame_bytes} pixel bytes present")
    if h.pixel_representation == 0 and h.bits_stored < h.bits_allocated:
        buf &= np.array((1 << h.bits_stored) - 1, dtype=dtype)  # high bits may hold overlays
    _into(out, buf, h.rescale_slope, h.rescale_intercept)
    return True


def _pread_fallback(fd: int, buf: np.ndarray, offset: int) -> int:
    os.lseek(fd, offset, os.SEEK_SET)
    data = os.read(fd, buf.nbytes)
    buf.reshape(-1).view(np.uint8)[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    return len(data)


def _decode_file(path: str) -> np.ndarray:
    """Every frame of one file through pydicom's decoders: (frames, rows, cols) stored values."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - decoders raise RuntimeError, ValueError, ...; the Rust ones
        # (pylibjpeg-rle) panic on corrupt data with pyo3's PanicException, a BaseException: one bad file
        # must still be a skipped slice with its reason, never a crashed load
        raise PixelError(f"cannot decode pixel data ({type(e).__name__}: {e})") from e
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise PixelError(f"unexpected pixel array shape {arr.shape} (colour or multi-sample data)")
    return arr


def _mosaic_image(h: SliceHeader, cache: dict, scratch: dict) -> np.ndarray:
    """The whole (rescaled) MOSAIC image a tile header points into; one image is kept at a time."""
    if h.path not in cache:
        cache.clear()
        k, grid, rows, cols = h.mosaic
        whole = replace(h, rows=rows, columns=cols, mosaic=None, frame=None)
        image = np.empty((rows, cols), dtype=np.float32)
        try:
            if not _fast_read(whole, image, scratch):
                arr = _decode_file(h.path)
                if arr.shape[1:] != (rows, cols):
                    raise PixelError(f"decoded pixels {arr.shape} do not match the MOSAIC header ({rows}x{cols})")
                _into(image, arr[0], h.rescale_slope, h.rescale_intercept)
            cache[h.path] = image
        except PixelError as e:
            cache[h.path] = e
    image = cache[h.path]
    if isinstance(image, PixelError):
        raise image
    return image


def read_slices(headers: Sequence[SliceHeader], problems: list[tuple[int, str]],
                decoded: dict | None = None) -> np.ndarray:
    """Decode the given images into (n, rows, cols) float32 real-world values.

    Images that fail go to ``problems`` as (index, reason) and their slice is left as NaN; the caller
    drops them. All headers must share rows/columns. ``decoded`` (optional) keeps compressed multi-frame
    files decoded across calls (the volumes of a 4-D series are read one call each).
    """
    n = len(headers)
    rows, cols = headers[0].rows, headers[0].columns
    out = np.empty((n, rows, cols), dtype=np.float32)
    decoded = {} if decoded is None else decoded  # multi-frame files decoded once
    scratch: dict = {}
    mosaic: dict[str, np.ndarray | PixelError] = {}  # the last MOSAIC image read (its tiles come together)
    # Visit images file by file (the output order is kept): the tiles of a mosaic are cut from one read.
    for i in sorted(range(n), key=lambda i: (headers[i].path, headers[i].frame or 0,
                                             headers[i].mosaic[0] if headers[i].mosaic else 0)):
        h = headers[i]
        try:
            if h.rows != rows or h.columns != cols:
                raise PixelError(f"size {h.rows}x{h.columns} differs from the series' {rows}x{cols}")
            if h.mosaic is not None:
                out[i] = tile_of(_mosaic_image(h, mosaic, scratch), h)
                continue
            if _fast_read(h, out[i], scratch):
                continue
            if h.path not in decoded:
                try:
                    decoded[h.path] = _decode_file(h.path)
                except PixelError as e:
                    decoded[h.path] = e  # remember: the other frames of this file fail the same way
            arr = decoded[h.path] if h.n_frames > 1 else decoded.pop(h.path)  # one-image files: not kept
            if isinstance(arr, PixelError):
                raise arr
            frame = h.frame or 0
            if frame >= arr.shape[0] or arr.shape[1:] != (rows, cols):
                raise PixelError(f"decoded pixels {arr.shape} do not match the header ({rows}x{cols}, "
                                 f"frame {frame})")
            _into(out[i], arr[frame], h.rescale_slope, h.rescale_intercept)
        except PixelError as e:
            problems.append((i, str(e)))
            out[i] = np.nan
        except OSError as e:
            problems.append((i, f"cannot read file: {e.strerror or e}"))
            out[i] = np.nan
    return out
