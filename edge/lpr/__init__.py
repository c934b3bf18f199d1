"""Licence-plate recognition at the edge: find plates in a whole camera frame and read them.

    from edge.lpr import read_frame, read_crop, FrameError
    for plate in read_frame(jpeg_bytes):        # best first; [] when the frame shows no plate
        plate.text, plate.colour, plate.confidence, plate.box, plate.ms

Plates are found without a neural detector (colour and stroke proposals on a 640-wide copy of
the frame, edge/lpr/finder.py), straightened, and read by the PP-OCRv4 recognition model that
ships inside the rapidocr-onnxruntime wheel (run by onnxruntime), constrained to the plate
grammars (edge/lpr/text.py). Nothing is downloaded at run time. A `Reader` holds the model
(loaded on first use); the module functions share one default Reader.

Frames that cannot be read (empty, not an image, corrupt, truncated, larger than 4096x4096
or 20 MB) raise FrameError, a ValueError, with a message saying why.
"""
from __future__ import annotations

from edge.lpr.frames import MAX_BYTES, MAX_SIDE, FrameError
from edge.lpr.reader import COLOURS, PlateRead, Reader, default_reader


def read_frame(data) -> list[PlateRead]:
    """bytes (JPEG, PNG, BMP, WebP) or a BGR/gray uint8 array -> the plates read, best first."""
    return default_reader().read_frame(data)


def read_crop(data) -> PlateRead:
    """A crop of one plate -> its read (text "" and confidence 0.0 when nothing plate-like)."""
    return default_reader().read_crop(data)


__all__ = ["COLOURS", "MAX_BYTES", "MAX_SIDE", "FrameError", "PlateRead", "Reader", "read_crop",
           "read_frame"]
