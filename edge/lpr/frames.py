"""Turning what a camera (or a caller) hands over into a BGR frame, or a clear FrameError.

Bytes are checked before they are decoded: the size in bytes, the format by its signature
(JPEG, PNG, BMP, WebP), the dimensions from the header (so a 60,000 x 60,000 PNG of a few
kilobytes is refused without allocating it), and a JPEG's end marker (OpenCV decodes a
truncated JPEG into a half-grey picture without complaint).
"""
from __future__ import annotations

import struct

import cv2
import numpy as np

MAX_BYTES = 20 * 1024 * 1024
MAX_SIDE = 4096
MIN_SIDE = 8


class FrameError(ValueError):
    """The frame cannot be read: empty, not an image, corrupt, truncated, or too large."""


def _format(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM" and len(data) >= 26:
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:5] == b"%PDF-":
        raise FrameError("not an image: a PDF document")
    raise FrameError(f"not an image: unknown format (starts {data[:8]!r}); JPEG, PNG, BMP or WebP expected")


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise FrameError("corrupt JPEG: bad marker")
        marker = data[i + 1]
        if marker == 0xFF:           # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                break
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + length
    raise FrameError("corrupt or truncated JPEG: no frame header")


def _size(data: bytes, fmt: str) -> tuple[int, int]:
    try:
        if fmt == "jpeg":
            return _jpeg_size(data)
        if fmt == "png":
            if data[12:16] != b"IHDR":
                raise FrameError("corrupt PNG: no IHDR")
            return struct.unpack(">II", data[16:24])
        if fmt == "bmp":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if fmt == "webp":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return w, h
            if chunk == b"VP8L":
                b = int.from_bytes(data[21:25], "little")
                return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            raise FrameError("corrupt WebP: unknown chunk")
    except struct.error as exc:
        raise FrameError(f"corrupt {fmt.upper()}: header too short") from exc
    raise FrameError(f"unsupported format {fmt}")


def _check_dims(w: int, h: int) -> None:
    if w > MAX_SIDE or h > MAX_SIDE:
        raise FrameError(f"frame too large: {w}x{h} (at most {MAX_SIDE}x{MAX_SIDE})")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise FrameError(f"frame too small: {w}x{h} (at least {MIN_SIDE}x{MIN_SIDE})")


def decode(data) -> np.ndarray:
    """bytes (an encoded image) or a numpy array (gray, BGR or BGRA uint8) -> BGR uint8."""
    if isinstance(data, np.ndarray):
        return from_array(data)
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise FrameError(f"a frame is bytes or a numpy array, not {type(data).__name__}")
    if not data:
        raise FrameError("empty frame: no bytes")
    if len(data) > MAX_BYTES:
        raise FrameError(f"frame too large: {len(data)} bytes (at most {MAX_BYTES})")
    fmt = _format(data)
    w, h = _size(data, fmt)
    _check_dims(w, h)
    if fmt == "jpeg" and b"\xff\xd9" not in data[-4096:]:
        raise FrameError("truncated JPEG: no end-of-image marker")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise FrameError(f"corrupt {fmt.upper()}: cannot be decoded")
    return img


def from_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise FrameError(f"a frame array must be uint8, not {arr.dtype}")
    if arr.ndim == 2:
        _check_dims(arr.shape[1], arr.shape[0])
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise FrameError(f"a frame array must be HxW, HxWx3 (BGR) or HxWx4, not {arr.shape}")
    _check_dims(arr.shape[1], arr.shape[0])
    if arr.shape[2] == 1:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    if arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(arr)
