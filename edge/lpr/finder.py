"""Finding plate candidates in a whole frame, fast, without a neural detector.

Two cheap proposals on a frame scaled down to WORK_WIDTH (640 for a 1280x720 frame):

* colour: the backgrounds of blue, yellow and green (new-energy) plates in HSV, closed over the
  characters; each blob's rotated rectangle or, when its outline is a clean quadrilateral, its
  four corners (a perspective view); also bright unsaturated blobs (white plates, whose own
  quad is not trusted: a red suffix falls outside the mask, so only its refinements count);
* text: a plate is a short row of high-contrast vertical strokes whatever its colours (white
  and black plates, and coloured ones in odd light): the horizontal gradient, thresholded and
  closed along the row into blobs. A blob too tall for a plate (a plate touching the grille
  above it) also offers its bottom and top strips, shaped like a plate; and a band of strokes
  that tall is also split at its strongest horizontal edge when refined.

Each blob must look like a plate (aspect 1.6-7 as a rotated rectangle, big enough to read,
mostly filled, enough vertical edges inside, enough stroke crossings along its middle) and is
scored by how much. The best few are cut from the full-resolution frame, rectified, and read;
the recogniser and the plate grammar decide which of them are plates.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WORK_WIDTH = 640
MIN_PLATE_W = 56       # px in the full frame: smaller plates are not read
MAX_CANDIDATES = 6
BAND_LEVEL = 0.5
SPLIT_MIN = 14         # rows (of 48) of a band worth trying to split
SPLIT_EDGE = 2.0       # the split row's horizontal edges against the band's median
SPLIT_ASPECT = (2.0, 5.0)   # a split half must be shaped like a plate
STRIP_BELOW = 2.2      # text blobs less elongated than this also offer strips
STRIP_ASPECT = 3.2     # strips cut from a blob too tall to be a plate
PROPOSALS = 12        # proposals refined and scored per frame

# OpenCV HSV (H 0..180): plate backgrounds
_HSV = {
    "blue": ((98, 90, 45), (128, 255, 255)),
    "yellow": ((12, 100, 80), (34, 255, 255)),
    "green": ((36, 45, 70), (85, 255, 255)),
    "white": ((0, 0, 150), (180, 45, 255)),
}


@dataclass
class Candidate:
    quad: np.ndarray      # 4x2 float32 in the full frame: top-left, top-right, bottom-right, bottom-left
    score: float
    source: str           # "blue" | "yellow" | "green" | "white" | "text" | "det" (detector.py)
    chars: int = 0        # character-like blobs found inside

    @property
    def box(self) -> tuple[int, int, int, int]:
        x0, y0 = self.quad.min(axis=0)
        x1, y1 = self.quad.max(axis=0)
        return int(x0), int(y0), int(round(x1 - x0)), int(round(y1 - y0))


def order_quad(pts: np.ndarray) -> np.ndarray:
    """Four points as top-left, top-right, bottom-right, bottom-left (along the long side)."""
    pts = np.asarray(pts, np.float32).reshape(4, 2)
    c = pts.mean(axis=0)
    ang = np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0])
    pts = pts[np.argsort(ang)]            # clockwise in image coordinates, from about -pi
    # start at the top-left: the point with the smallest x + y among the two upper ones
    i = int(np.argmin(pts[:, 0] + pts[:, 1]))
    pts = np.roll(pts, -i, axis=0)
    # the first edge must be the long one
    if np.linalg.norm(pts[1] - pts[0]) < np.linalg.norm(pts[3] - pts[0]):
        pts = np.roll(pts, 1, axis=0)
        if pts[0, 1] > pts[3, 1]:        # keep text upright for a plate rolled past 45 degrees
            pts = np.roll(pts, 2, axis=0)
    return pts


def _rect_quad(rect, grow_w: float, grow_h: float) -> np.ndarray:
    (cx, cy), (w, h), angle = rect
    if w < h:
        w, h, angle = h, w, angle + 90
    return order_quad(cv2.boxPoints(((cx, cy), (w * grow_w, h * grow_h), angle)))


def _quad_of(contour, rect) -> np.ndarray | None:
    """The contour's four corners when its convex hull is close to a quadrilateral."""
    hull = cv2.convexHull(contour)
    peri = cv2.arcLength(hull, True)
    for eps in (0.02, 0.035, 0.05):
        approx = cv2.approxPolyDP(hull, eps * peri, True)
        if len(approx) == 4:
            q = order_quad(approx.reshape(4, 2))
            area = cv2.contourArea(q)
            if area >= 0.8 * rect[1][0] * rect[1][1]:
                return q
            return None
    return None


class Finder:
    def __init__(self, work_width: int = WORK_WIDTH, max_candidates: int = MAX_CANDIDATES):
        self.work_width = work_width
        self.max_candidates = max_candidates

    def find(self, frame: np.ndarray) -> list[Candidate]:
        H, W = frame.shape[:2]
        scale = min(1.0, self.work_width / W)
        small = frame if scale == 1.0 else cv2.resize(frame, (int(W * scale), int(H * scale)),
                                                      interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        gx = cv2.convertScaleAbs(cv2.Sobel(gray, cv2.CV_16S, 1, 0, ksize=3))
        min_w = MIN_PLATE_W * scale
        proposals: list[Candidate] = []
        proposals += self._colour(small, gx, min_w)
        proposals += self._text(gx, gray, min_w)
        proposals = _nms(proposals, 0.5)[:PROPOSALS]
        return self.refined(frame, [Candidate(p.quad / scale, p.score, p.source) for p in proposals])

    def refined(self, frame: np.ndarray, proposals: list[Candidate]) -> list[Candidate]:
        """Each proposal (in frame coordinates) tightened to its row of characters and scored
        by them; the best few, best first."""
        out = []
        for p in proposals:
            best = None
            options = refine(frame, p.quad)
            if p.source not in ("text", "white"):   # a colour blob or a detected line can be the plate already
                options.append(p.quad)
            for quad in options:
                chars, spread = char_count(frame, quad)
                score = p.score + _char_score(chars, spread)
                if p.source == "det":                # no stroke score: the plate's shape counts instead
                    score += 0.5 * max(0.0, 1 - abs(np.log(_aspect(quad) / 3.4)))
                if score > 0 and (best is None or score > best.score):
                    best = Candidate(quad, score, p.source, chars)
            if best is not None:
                out.append(best)
        out = _nms(out, 0.3)
        return out[:self.max_candidates]

    # -- proposals --------------------------------------------------------------------------------

    def _colour(self, small, gx, min_w) -> list[Candidate]:
        hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
        out = []
        k = max(3, int(round(min_w / 8)) | 1)
        close = cv2.getStructuringElement(cv2.MORPH_RECT, (k, max(3, k // 2)))
        for name, (lo, hi) in _HSV.items():
            mask = cv2.inRange(hsv, lo, hi)
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, close)
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
            out += self._blobs(mask, gx, min_w, name, grow=(1.04, 1.08))
        return out

    def _text(self, gx, gray, min_w) -> list[Candidate]:
        thr = max(40.0, float(np.percentile(gx, 90)))
        edges = (gx > thr).astype(np.uint8) * 255
        kw = max(5, int(round(min_w / 5)) | 1)
        edges = cv2.morphologyEx(edges, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (kw, 3)))
        edges = cv2.morphologyEx(edges, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (5, 3)))
        return self._blobs(edges, gx, min_w, "text", grow=(1.04, 1.08))

    def _blobs(self, mask, gx, min_w, source, grow) -> list[Candidate]:
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        out = []
        Hs, Ws = mask.shape[:2]
        for cnt in contours:
            x, y, w, h = cv2.boundingRect(cnt)
            if w < min_w * 0.8 or h < 5 or w > Ws * 0.6 or h > Hs * 0.4:
                continue
            rect = cv2.minAreaRect(cnt)
            rw, rh = rect[1]
            if rw < rh:
                rw, rh = rh, rw
            if rh < 5 or rw < min_w:
                continue
            aspect = rw / rh
            if source == "text" and aspect < STRIP_BELOW and w >= min_w and h <= w:
                # a plate merged with the grille above it (or something below): offer the
                # bottom and top strips of the blob, shaped like a plate
                out += self._strips(mask, gx, x, y, w, h)
            if not 1.6 <= aspect <= 7.5:
                continue
            fill = cv2.contourArea(cnt) / (rw * rh + 1e-6)
            if fill < 0.45:
                continue
            quad = _quad_of(cnt, rect) if source != "text" else None
            if quad is None:
                quad = _rect_quad(rect, *grow)
            else:
                c = quad.mean(axis=0)
                quad = (quad - c) * np.array(grow, np.float32) + c
            score = self._score(gx, quad, aspect, fill, source)
            if score > 0:
                out.append(Candidate(quad.astype(np.float32), score, source))
        return out

    def _strips(self, mask, gx, x, y, w, h) -> list[Candidate]:
        out = []
        sh = w / STRIP_ASPECT
        for y0 in (y + h - sh, y):
            q = np.array([[x, y0], [x + w, y0], [x + w, y0 + sh], [x, y0 + sh]], np.float32)
            c = q.mean(axis=0)
            q = (q - c) * np.array((1.04, 1.15), np.float32) + c
            fill = float(mask[int(y0):int(y0 + sh) + 1, x:x + w].mean()) / 255
            score = self._score(gx, q, STRIP_ASPECT, fill, "text")
            if score > 0:
                out.append(Candidate(q, score, "text"))
        return out

    @staticmethod
    def _score(gx, quad, aspect, fill, source) -> float:
        """Plate-likeness from the gradient inside the (rectified) candidate: a plate has a row of
        strokes, many crossings along its middle, spread over its whole width."""
        w, h = 64, 16
        M = cv2.getPerspectiveTransform(quad.astype(np.float32),
                                        np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32))
        patch = cv2.warpPerspective(gx, M, (w, h), flags=cv2.INTER_LINEAR)
        mid = patch[3:13]
        strong = mid > 60
        density = float(strong.mean())
        if density < 0.08:
            return 0.0
        # stroke crossings along the middle rows, and how evenly the strokes cover the width
        crossings = float(np.abs(np.diff(strong.astype(np.int8), axis=1)).sum(axis=1).mean())
        cols = strong.any(axis=0).reshape(8, 8).any(axis=1).mean()
        if crossings < 4 or cols < 0.6:
            return 0.0
        s = min(crossings, 20) / 20 + cols + min(density, 0.35) / 0.35 * 0.5
        s += 0.5 * max(0.0, 1 - abs(np.log(aspect / 3.4)))
        s += 0.3 * fill
        if source not in ("text", "white"):
            s += 0.4
        return float(s)


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter + 1e-6)


def _nms(cands: list[Candidate], thr: float) -> list[Candidate]:
    cands = sorted(cands, key=lambda c: -c.score)
    keep: list[Candidate] = []
    for c in cands:
        if all(_iou(c.box, k.box) < thr for k in keep):
            keep.append(c)
    return keep


def rectify(frame: np.ndarray, quad: np.ndarray, out_w: int, out_h: int = 48) -> np.ndarray:
    """The quadrilateral cut from the frame and straightened to out_w x out_h."""
    quad = quad.astype(np.float32)
    qw = float(max(np.linalg.norm(quad[1] - quad[0]), np.linalg.norm(quad[2] - quad[3])))
    dst = np.array([[0, 0], [out_w, 0], [out_w, out_h], [0, out_h]], np.float32)
    if qw > 1.6 * out_w:   # much bigger than the output: shrink the region first, against aliasing
        x, y, w, h = cv2.boundingRect(quad.astype(np.int32))
        x, y = max(0, x), max(0, y)
        f = 1.3 * out_w / qw
        region = frame[y:y + h + 1, x:x + w + 1]
        region = cv2.resize(region, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        quad = (quad - np.array([x, y], np.float32)) * f
        frame = region
    M = cv2.getPerspectiveTransform(quad, dst)
    return cv2.warpPerspective(frame, M, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _unit_map(quad: np.ndarray) -> np.ndarray:
    """Homography from the unit square to the quadrilateral."""
    return cv2.getPerspectiveTransform(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32),
                                       quad.astype(np.float32))


def _map(M: np.ndarray, pts) -> np.ndarray:
    pts = np.asarray(pts, np.float32).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(pts, M).reshape(-1, 2)


def refine(frame: np.ndarray, quad: np.ndarray, patch_h: int = 48, bands: int = 2) -> list[np.ndarray]:
    """Tighten a proposal to its row of characters: look at a generous region around it
    (straightened), find the bands of rows with the strongest vertical strokes (the best two:
    a grille above a plate can be the strongest) and the columns each band's strokes span, and
    return each band with a margin, as a quadrilateral in the frame."""
    M = _unit_map(quad)
    ex0, ex1, ey0, ey1 = -0.3, 1.3, -0.45, 1.45
    outer = _map(M, [[ex0, ey0], [ex1, ey0], [ex1, ey1], [ex0, ey1]])
    qw = float(np.linalg.norm(quad[1] - quad[0]) + np.linalg.norm(quad[2] - quad[3])) / 2
    qh = float(np.linalg.norm(quad[3] - quad[0]) + np.linalg.norm(quad[2] - quad[1])) / 2
    aspect = (qw * (ex1 - ex0)) / max(qh * (ey1 - ey0), 1.0)
    pw = int(np.clip(round(patch_h * aspect), 32, 480))
    patch = rectify(frame, outer, pw, patch_h)
    gray = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)
    g = np.abs(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3))
    rows = g[:, pw // 10: pw - pw // 10].mean(axis=1)
    rows = np.convolve(rows, np.ones(3) / 3, mode="same")
    lo = int(patch_h * (0 - ey0) / (ey1 - ey0))
    hi = int(patch_h * (1 - ey0) / (ey1 - ey0))
    base = float(np.percentile(rows, 20))
    P = cv2.getPerspectiveTransform(np.array([[0, 0], [pw, 0], [pw, patch_h], [0, patch_h]], np.float32),
                                    outer.astype(np.float32))
    quads = []
    search = rows.copy()
    first = None
    gy = None
    for _ in range(bands):
        peak = lo + int(np.argmax(search[lo:hi]))
        if search[peak] <= base * 1.5 + 1:
            break
        if first is not None and rows[peak] < base + 0.5 * (first - base):
            break
        first = first if first is not None else float(rows[peak])
        top, bottom = _band(rows, peak, base)
        search[max(0, top - 2):bottom + 3] = 0
        q = _columns(g, top, bottom, pw, patch_h, ex0, ex1, P)
        if q is not None:
            quads.append(q)
        # a plate touching a grille above (or below) it makes one tall band: split it at the
        # strongest horizontal edge inside it (the plate's border) and offer both halves
        if bottom - top + 1 >= SPLIT_MIN:
            if gy is None:
                gy = np.abs(cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3))[:, pw // 10: pw - pw // 10].mean(axis=1)
            a, b = top + (bottom - top) // 4, bottom - (bottom - top) // 4
            cut = a + int(np.argmax(gy[a:b + 1]))
            if gy[cut] > SPLIT_EDGE * float(np.median(gy[top:bottom + 1])) + 1:
                for t2, b2 in ((top, cut), (cut, bottom)):
                    q = _columns(g, t2, b2, pw, patch_h, ex0, ex1, P)
                    if q is not None and SPLIT_ASPECT[0] <= _aspect(q) <= SPLIT_ASPECT[1]:
                        quads.append(q)
    return quads


def _aspect(q: np.ndarray) -> float:
    w = float(np.linalg.norm(q[1] - q[0]) + np.linalg.norm(q[2] - q[3]))
    h = float(np.linalg.norm(q[3] - q[0]) + np.linalg.norm(q[2] - q[1]))
    return w / max(h, 1.0)


def _band(rows: np.ndarray, peak: int, base: float) -> tuple[int, int]:
    t = base + BAND_LEVEL * (rows[peak] - base)
    top = peak
    while top > 0 and rows[top - 1] > t:
        top -= 1
    bottom = peak
    while bottom < len(rows) - 1 and rows[bottom + 1] > t:
        bottom += 1
    return top, bottom


def _columns(g, top, bottom, pw, patch_h, ex0, ex1, P) -> np.ndarray | None:
    """The columns the strokes of the band [top, bottom] span -> the band's quad in the frame."""
    band = bottom - top + 1
    if band < 6:
        return None
    cols = g[top:bottom + 1].mean(axis=0)
    cols = np.convolve(cols, np.ones(3) / 3, mode="same")
    ct = 0.3 * float(np.percentile(cols, 90))
    on = cols > ct
    gap = max(3, int(band * 0.7))
    # grow from the strongest columns near the middle, across gaps narrower than a character
    mid_lo, mid_hi = int(pw * (0 - ex0) / (ex1 - ex0)), int(pw * (1 - ex0) / (ex1 - ex0))
    idx = np.nonzero(on[mid_lo:mid_hi])[0]
    if len(idx) == 0:
        return None
    left = right = mid_lo + int(idx[len(idx) // 2])
    miss = 0
    x = left
    while x > 0 and miss <= gap:
        x -= 1
        if on[x]:
            left, miss = x, 0
        else:
            miss += 1
    miss = 0
    x = right
    while x < pw - 1 and miss <= gap:
        x += 1
        if on[x]:
            right, miss = x, 0
        else:
            miss += 1
    # the columns of the whole proposal count too: the band must not be a fragment of it
    left = min(left, mid_lo + int(idx[0]))
    right = max(right, mid_lo + int(idx[-1]))
    width = right - left + 1
    if width < 1.5 * band or width > 10 * band:
        return None
    mx, my = 0.18 * band, 0.2 * band
    x0, x1 = max(0.0, left - mx), min(float(pw), right + 1 + mx)
    y0, y1 = max(0.0, top - my), min(float(patch_h), bottom + 1 + my)
    # patch pixel -> frame
    return _map(P, [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]).astype(np.float32)


def char_count(frame: np.ndarray, quad: np.ndarray, h: int = 32) -> tuple[int, float]:
    """Character-like blobs in the straightened quadrilateral (either polarity, the better one):
    taller than wide, 40-95% of its height, not touching its top or bottom. Returns the count
    and how unevenly they sit (spread of their centres and heights; 0 for a perfect row)."""
    qw = float(np.linalg.norm(quad[1] - quad[0]))
    qh = float(np.linalg.norm(quad[3] - quad[0]))
    w = int(np.clip(round(h * qw / max(qh, 1.0)), 16, 400))
    gray = cv2.cvtColor(rectify(frame, quad, w, h), cv2.COLOR_BGR2GRAY)
    best: tuple[int, float] = (0, 0.0)
    for g in (gray, 255 - gray):
        b = cv2.adaptiveThreshold(g, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, (h // 2) | 1, -5)
        n, _, st, _ = cv2.connectedComponentsWithStats(b, connectivity=8)
        st = st[1:]
        keep = ((st[:, 3] >= 0.4 * h) & (st[:, 3] <= 0.95 * h) & (st[:, 2] >= 0.015 * w)
                & (st[:, 2] <= 0.2 * w) & (st[:, 3] >= 1.1 * st[:, 2]) & (st[:, 1] > 0)
                & (st[:, 1] + st[:, 3] < h))
        k = st[keep]
        if len(k) > best[0]:
            spread = 0.0
            if len(k) >= 2:
                ys = k[:, 1] + k[:, 3] / 2
                spread = float(np.std(ys) / h + np.std(k[:, 3]) / np.mean(k[:, 3]))
            best = (len(k), spread)
    return best


def _char_score(n: int, spread: float) -> float:
    if 5 <= n <= 9:
        s = 2.0
    elif n in (4, 10):
        s = 1.0
    elif n == 3:
        s = 0.3
    else:
        s = -0.5
    return s - min(spread, 1.0)
