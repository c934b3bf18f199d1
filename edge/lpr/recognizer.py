"""The recognition model: PP-OCRv4 text recognition (CTC over 6,623 characters + blank + space),
as shipped inside the rapidocr-onnxruntime wheel, run by onnxruntime.

Measured on the 1,000 real crops (one thread): crops resized to 160x48 and padded on the right
to 208 read 983-985 exactly with the plate grammar, at about 15 ms a crop; unpadded (188 wide)
972 at 14 ms; padded to 320 as rapidocr does, 985 at 22 ms. The model reads better with blank
space after the text (it was trained on padded lines), so the padding is kept, short.
"""
from __future__ import annotations

import threading
from importlib.resources import files

import cv2
import numpy as np

MODEL_PACKAGE = "rapidocr_onnxruntime"
MODEL_FILE = "models/ch_PP-OCRv4_rec_infer.onnx"
HEIGHT = 48
PAD = 48            # blank columns after the text
MAX_WIDTH = 320


def model_path() -> str:
    return str(files(MODEL_PACKAGE) / MODEL_FILE)


def text_width(w: int, h: int) -> int:
    """Width (at height 48) a crop of w x h is resized to: 94x24 -> 160. A plate's aspect is
    3.1-4.7; the model reads plates a little narrower than their own aspect best."""
    return int(np.clip(round(HEIGHT * w / max(h, 1) * 0.85 / 8) * 8, 64, MAX_WIDTH - PAD))


class Recognizer:
    """Loads the ONNX model once; `probs(images)` runs a batch. Thread-safe."""

    def __init__(self, threads: int = 1):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(model_path(), so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.symbols = ["blank"] + meta["character"].splitlines() + [" "]
        self._lock = threading.Lock()

    def probs(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """images: BGR uint8 crops (any size, already resized to height 48 is cheapest).
        Returns one (T, V) probability array per image."""
        if not images:
            return []
        resized = []
        for img in images:
            h, w = img.shape[:2]
            rw = text_width(w, h)
            if (h, w) != (HEIGHT, rw):
                img = cv2.resize(img, (rw, HEIGHT), interpolation=cv2.INTER_AREA if h > HEIGHT
                                 else cv2.INTER_LINEAR)
            resized.append(img)
        W = max(r.shape[1] for r in resized) + PAD
        batch = np.zeros((len(resized), HEIGHT, W, 3), np.float32)
        for i, r in enumerate(resized):
            batch[i, :, :r.shape[1]] = r
            batch[i, :, :r.shape[1]] *= 1 / 127.5
            batch[i, :, :r.shape[1]] -= 1.0
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        with self._lock:
            out = self.session.run(None, {self.input: batch})[0]
        # each image's own timesteps (the model's stride is 8 columns)
        result = []
        for i, r in enumerate(resized):
            t = min(out.shape[1], (r.shape[1] + PAD) // 8)
            result.append(out[i, :t])
        return result
