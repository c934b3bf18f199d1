"""Licence-plate recognition at the edge: find plates in a whole camera frame and read them.

    from edge.lpr import read_frame, read_crop, FrameError
    for plate in read_frame(jpeg_bytes):        # best first; [] when the frame shows no plate
        plate.text, plate.colour, plate.confidence, plate.box, plate.ms

Plates are found first by cheap colour and stroke proposals on a 640-wide copy of the frame
(edge/lpr/finder.py); when those give no confident mainland read, by PP-OCRv4's text detector
on a 480-wide copy (edge/lpr/detector.py, trained on real photographs), and failing that on a
640-wide copy with its local contrast evened out (night, glare). Each candidate is
straightened and read by the PP-OCRv4 recognition model, constrained to the plate grammars
(edge/lpr/text.py); an unsure best read gets three second looks (narrower, wider, more margin).
Both models ship inside the rapidocr-onnxruntime wheel and run in onnxruntime: nothing is
downloaded at run time. A `Reader` holds the model
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
