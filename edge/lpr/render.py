"""Rendered plates and street-like 1280x720 scenes, seeded, for tests and the benchmark.

A stand-in for real photos, never mixed with them in a figure: what it shows is whether the
finder and reader cope with every plate kind, tilt, perspective, blur, light and noise, on
frames with distractors a plate finder trips on (blue and yellow signs, car grilles, windows,
lane markings, text on shop signs). Same seed, same frame, on any machine: the glyphs come
from the font subset shipped beside this file (fonts/plate-subset.otf, SIL OFL 1.1), not from
whatever fonts the system has.

    scene = render_scene(7)                  # a Scene: .image (BGR uint8), .plates
    scene.plates[0].text, .colour, .kind, .quad
    plate = render_plate("皖A12345", "blue")  # a plate alone, 440x140 BGR
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.lpr.text import DIGITS, LETTERS, PROVINCES, SERIAL

FONT = Path(__file__).resolve().parent / "fonts" / "plate-subset.otf"
KINDS = ("blue", "yellow", "white", "black", "green", "plain")
# words on the shop and street signs of a scene (the font subset holds their glyphs)
SIGN_WORDS = ("停车场", "出口", "入口", "收费站", "限速", "注意安全", "欢迎光临", "物业管理处",
              "小区", "便利店", "超市", "银行", "药房", "饭店", "洗车", "充电站", "地下车库",
              "请减速慢行", "访客登记", "禁止停车")
SIGN_LATIN = ("EXIT", "P", "B2", "OPEN", "24H", "PARKING", "WC", "CAFE", "SALE 50", "ATM")

# background, text (RGB) of each kind; the border is drawn in the text colour
_STYLE = {
    "blue": ((10, 70, 190), (245, 245, 245)),
    "yellow": ((245, 190, 0), (15, 15, 15)),
    "white": ((238, 238, 236), (15, 15, 15)),
    "black": ((18, 18, 20), (240, 240, 240)),
    "green": ((70, 190, 100), (15, 15, 15)),     # a gradient from near white at the top
}
_PLAIN_STYLES = (("white", (235, 235, 232), (15, 15, 15)),
                 ("yellow", (245, 200, 20), (15, 15, 15)),
                 ("other", (200, 45, 40), (245, 245, 245)))   # e.g. a red temporary plate


@dataclass
class PlateTruth:
    text: str
    colour: str        # blue | yellow | white | black | green | other
    kind: str          # blue | yellow | white | black | green | plain
    quad: np.ndarray   # 4x2 float32, corners in the frame: top-left, top-right, bottom-right, bottom-left

    @property
    def box(self) -> tuple[int, int, int, int]:
        x0, y0 = self.quad.min(axis=0)
        x1, y1 = self.quad.max(axis=0)
        return int(x0), int(y0), int(math.ceil(x1 - x0)), int(math.ceil(y1 - y0))


@dataclass
class Scene:
    image: np.ndarray
    plates: list[PlateTruth] = field(default_factory=list)
    seed: int = 0


# -- plate text -----------------------------------------------------------------------------------------

def random_text(kind: str, rng: np.random.Generator) -> str:
    def pick(chars, n=1):
        return "".join(chars[int(i)] for i in rng.integers(0, len(chars), n))

    def serial(n):   # mostly digits, as real serials are
        return "".join(pick(DIGITS) if rng.random() < 0.65 else pick(SERIAL) for _ in range(n))

    prov = pick(PROVINCES)
    letter = pick(LETTERS.replace("I", "").replace("O", ""))
    if kind == "blue":
        return prov + letter + serial(5)
    if kind == "yellow":
        return prov + letter + (serial(4) + "学" if rng.random() < 0.25 else serial(5))
    if kind == "white":
        return prov + letter + pick(DIGITS, 4) + "警"
    if kind == "black":
        if rng.random() < 0.5:
            return "粤Z" + serial(4) + ("港" if rng.random() < 0.5 else "澳")
        return prov + letter + serial(5)
    if kind == "green":
        if rng.random() < 0.7:   # small new-energy car: D or F, then a digit or letter, four digits
            return prov + letter + pick("DF") + pick(SERIAL) + pick(DIGITS, 4)
        return prov + letter + pick(DIGITS, 5) + pick("DF")
    if kind == "plain":   # no I, O or Q, as on most plates that have no province character
        letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
        n = int(rng.integers(5, 9))
        pattern = rng.integers(0, 3)
        if pattern == 0:
            return pick(letters, 2) + pick(DIGITS, 2) + pick(letters, n - 4)
        if pattern == 1:
            return pick(DIGITS, 1) + pick(letters, 3) + pick(DIGITS, n - 4)
        return pick(letters, 3) + pick(DIGITS, n - 3)
    raise ValueError(f"unknown plate kind {kind!r}")


# -- glyphs and plates ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _font(size: int = 160):
    from PIL import ImageFont
    return ImageFont.truetype(str(FONT), size)


@functools.lru_cache(maxsize=512)
def glyph(char: str, w: int, h: int) -> np.ndarray:
    """The character's ink stretched to a w x h cell (as plate fonts are): float32 alpha 0..1."""
    from PIL import Image, ImageDraw
    font = _font()
    canvas = Image.new("L", (240, 240), 0)
    ImageDraw.Draw(canvas).text((40, 10), char, font=font, fill=255)
    a = np.asarray(canvas)
    ys, xs = np.nonzero(a > 40)
    if len(xs) == 0:
        return np.zeros((h, w), np.float32)
    a = a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    ratio = a.shape[1] / a.shape[0]
    if ratio < 0.4:   # a narrow glyph (1, I) keeps its width, centred in the cell
        gw = max(2, int(round(h * ratio * 1.2)))
        cell = np.zeros((h, w), np.float32)
        g = cv2.resize(a, (min(gw, w), h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        x0 = (w - g.shape[1]) // 2
        cell[:, x0:x0 + g.shape[1]] = g
        return cell
    return cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _layout(kind: str, n: int) -> tuple[int, int, list[tuple[int, int, int, int]], tuple[int, int] | None]:
    """Plate size and the character cells (x, y, w, h), in millimetres as on a real plate."""
    if kind == "green":           # 480 x 140, 8 characters
        xs = [16, 68] + [146 + 53 * i for i in range(6)]
        return 480, 140, [(x, 25, 43, 90) for x in xs], (130, 70)
    if kind == "plain":
        W, H = 520, 112
        cw, gap = 52, 10
        total = n * cw + (n - 1) * gap
        x0 = (W - total) // 2
        return W, H, [(x0 + i * (cw + gap), 16, cw, 80) for i in range(n)], None
    xs = [15, 72, 151, 208, 265, 322, 379]   # 440 x 140, GA 36 layout
    return 440, 140, [(x, 25, 45, 90) for x in xs], (136, 70)


def render_plate(text: str, kind: str, rng: np.random.Generator | None = None,
                 px_per_mm: float = 1.0) -> tuple[np.ndarray, str]:
    """A plate image (BGR uint8) and its colour name."""
    rng = rng or np.random.default_rng(0)
    W, H, cells, dot = _layout(kind, len(text))
    if kind == "plain":
        colour, bg, fg = _PLAIN_STYLES[int(rng.integers(0, len(_PLAIN_STYLES)))]
    else:
        colour = kind
        bg, fg = _STYLE[kind]
    jitter = rng.normal(0, 8, 3)
    bg = np.clip(np.array(bg, np.float32) + jitter, 0, 255)
    img = np.empty((H, W, 3), np.float32)
    if kind == "green":
        top = np.array([238, 248, 240], np.float32)
        t = np.clip((np.arange(H, dtype=np.float32) / H - 0.15) / 0.75, 0, 1)[:, None, None]
        img[:] = top * (1 - t) + bg * t
    else:
        img[:] = bg
    fg = np.array(fg, np.float32)
    # border and rivets
    cv2.rectangle(img, (4, 4), (W - 5, H - 5), fg.tolist(), 3 if kind != "green" else 2)
    for rx in (W // 4 - 10, 3 * W // 4 + 10):
        cv2.circle(img, (rx, 12), 4, (fg * 0.6 + bg * 0.4).tolist(), -1)
    bold = int(rng.integers(-1, 2))
    for i, (ch, (x, y, w, h)) in enumerate(zip(text, cells, strict=False)):
        a = glyph(ch, w, h)
        if bold:
            a = (cv2.dilate if bold > 0 else cv2.erode)(a, np.ones((2, 2), np.uint8))
        colour_ch = np.array((200, 20, 20), np.float32) if (ch == "警" and i == len(text) - 1) else fg
        region = img[y:y + h, x:x + w]
        region[:] = region * (1 - a[..., None]) + colour_ch * a[..., None]
    if dot:
        cv2.circle(img, dot, 5, fg.tolist(), -1)
    # wear: a few faint smudges
    for _ in range(int(rng.integers(0, 4))):
        c = (int(rng.integers(0, W)), int(rng.integers(0, H)))
        cv2.circle(img, c, int(rng.integers(3, 12)), (img[c[1], c[0]] * rng.uniform(0.7, 1.1)).tolist(), -1)
    out = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    if px_per_mm != 1.0:
        out = cv2.resize(out, (int(W * px_per_mm), int(H * px_per_mm)), interpolation=cv2.INTER_AREA)
    return out, colour


# -- scenes ---------------------------------------------------------------------------------------------

def _rgb(rng, lo=0, hi=255):
    return [float(v) for v in rng.integers(lo, hi, 3)]


_CAR_COLOURS = [(235, 235, 235), (20, 20, 22), (170, 172, 178), (160, 20, 25), (20, 50, 150),
                (200, 170, 20), (30, 110, 50), (90, 90, 95), (110, 70, 40), (60, 120, 190)]


def _text(img, text, org, height, colour, rng):
    """Sign text: each glyph stretched to a height x height*0.9 cell (BGR image, in place)."""
    x, y = org
    for ch in text:
        if ch == " ":
            x += height // 2
            continue
        w = int(height * (0.9 if ord(ch) > 0x2E80 else 0.6))
        if x + w >= img.shape[1] or y + height >= img.shape[0] or x < 0 or y < 0:
            return
        a = glyph(ch, w, height)[..., None]
        region = img[y:y + height, x:x + w]
        region[:] = (region * (1 - a) + np.array(colour, np.float32) * a).astype(img.dtype)
        x += w + max(1, height // 8)


def _background(rng, W, H) -> np.ndarray:
    img = np.zeros((H, W, 3), np.float32)
    horizon = int(H * rng.uniform(0.3, 0.55))
    sky_top, sky_bot = np.array(_rgb(rng, 120, 255)), np.array(_rgb(rng, 150, 255))
    t = np.linspace(0, 1, horizon)[:, None, None]
    img[:horizon] = sky_top * (1 - t) + sky_bot * t
    # buildings with windows, shop signs
    x = int(rng.integers(-100, 0))
    while x < W:
        bw = int(rng.integers(120, 420))
        top = int(rng.integers(0, max(1, horizon - 40)))
        col = _rgb(rng, 60, 230)
        cv2.rectangle(img, (x, top), (x + bw, horizon + 40), col, -1)
        ww, wh = int(rng.integers(14, 40)), int(rng.integers(14, 40))
        win = _rgb(rng, 20, 200)
        for wy in range(top + 12, horizon - wh, wh + int(rng.integers(8, 30))):
            for wx in range(x + 10, x + bw - ww, ww + int(rng.integers(8, 30))):
                cv2.rectangle(img, (wx, wy), (wx + ww, wy + wh), win, -1)
        if rng.random() < 0.7:
            sh = int(rng.integers(24, 60))
            sy = int(np.clip(horizon - sh - rng.integers(0, 80), 0, H - sh - 1))
            sign_bg = [(20, 60, 170), (200, 30, 30), (240, 190, 0), (30, 120, 60), (240, 240, 240),
                       (20, 20, 20)][int(rng.integers(0, 6))]
            cv2.rectangle(img, (x + 5, sy), (x + bw - 5, sy + sh), sign_bg, -1)
            fg = (20, 20, 20) if sum(sign_bg) > 450 or sign_bg[1] > 150 else (245, 245, 245)
            words = SIGN_WORDS[int(rng.integers(0, len(SIGN_WORDS)))]
            if rng.random() < 0.35:
                words = SIGN_LATIN[int(rng.integers(0, len(SIGN_LATIN)))]
            _text(img, words, (x + 12, sy + sh // 6), int(sh * 0.66), fg, rng)
        x += bw + int(rng.integers(0, 40))
    # ground, lane markings, a kerb
    ground = np.array(_rgb(rng, 60, 150))
    img[horizon:] = ground
    noise = rng.normal(0, 6, (H - horizon, W, 1)).astype(np.float32)
    img[horizon:] += noise
    for _ in range(int(rng.integers(1, 5))):
        y = int(rng.integers(horizon + 10, H - 10))
        x0 = int(rng.integers(0, W))
        col = (240, 240, 240) if rng.random() < 0.6 else (230, 190, 30)
        cv2.line(img, (x0, y), (x0 + int(rng.integers(-600, 600)), y + int(rng.integers(-30, 80))), col,
                 int(rng.integers(3, 12)))
    # a standing sign or two (blue / yellow / white panels with text: plate-coloured distractors)
    for _ in range(int(rng.integers(0, 3))):
        sw, sh = int(rng.integers(80, 260)), int(rng.integers(30, 90))
        sx, sy = int(rng.integers(0, W - sw)), int(rng.integers(0, H - sh))
        bg = [(20, 70, 190), (245, 190, 0), (240, 240, 240), (60, 180, 90)][int(rng.integers(0, 4))]
        cv2.rectangle(img, (sx, sy), (sx + sw, sy + sh), bg, -1)
        fg = (245, 245, 245) if bg[2] > 150 and bg[0] < 100 else (20, 20, 20)
        cv2.rectangle(img, (sx + 3, sy + 3), (sx + sw - 4, sy + sh - 4), fg, 2)
        words = SIGN_WORDS[int(rng.integers(0, len(SIGN_WORDS)))]
        _text(img, words, (sx + 10, sy + sh // 5), int(sh * 0.55), fg, rng)
    return img


def _car(img, rng, cx, bottom, car_w) -> tuple[tuple[float, float], float]:
    """A car seen from the front; returns the plate centre and the plate width on its bumper."""
    H, W = img.shape[:2]
    body = _CAR_COLOURS[int(rng.integers(0, len(_CAR_COLOURS)))]
    body = [float(np.clip(c + rng.normal(0, 10), 0, 255)) for c in body]
    car_h = car_w * rng.uniform(0.62, 0.78)
    x0, x1 = int(cx - car_w / 2), int(cx + car_w / 2)
    y0 = int(bottom - car_h)
    roof = int(y0 + car_h * 0.05)
    belt = int(y0 + car_h * 0.42)
    # wheels, body, roof and windscreen
    for wx in (x0 + car_w * 0.06, x1 - car_w * 0.2):
        cv2.rectangle(img, (int(wx), int(bottom - car_h * 0.12)), (int(wx + car_w * 0.14), int(bottom)),
                      (15, 15, 15), -1)
    cv2.rectangle(img, (x0, belt), (x1, int(bottom - car_h * 0.08)), body, -1)
    pts = np.array([[x0 + car_w * 0.12, belt], [x0 + car_w * 0.22, roof], [x1 - car_w * 0.22, roof],
                    [x1 - car_w * 0.12, belt]], np.int32)
    cv2.fillPoly(img, [pts], body)
    inset = car_w * 0.03
    glass = np.array([[x0 + car_w * 0.15 + inset, belt - inset], [x0 + car_w * 0.24, roof + inset],
                      [x1 - car_w * 0.24, roof + inset], [x1 - car_w * 0.15 - inset, belt - inset]], np.int32)
    g = _rgb(rng, 20, 110)
    cv2.fillPoly(img, [glass], g)
    if rng.random() < 0.5:   # a reflection
        cv2.line(img, tuple(glass[0]), tuple(glass[2]), [min(255, c + 60) for c in g], int(car_w * 0.03))
    # headlights, grille with bars (vertical edges: a distractor), bumper
    hl_y0, hl_y1 = int(belt + car_h * 0.06), int(belt + car_h * 0.15)
    for hx0, hx1 in ((x0 + car_w * 0.04, x0 + car_w * 0.24), (x1 - car_w * 0.24, x1 - car_w * 0.04)):
        cv2.rectangle(img, (int(hx0), hl_y0), (int(hx1), hl_y1), _rgb(rng, 180, 255), -1)
    gx0, gx1 = int(cx - car_w * 0.2), int(cx + car_w * 0.2)
    gy0, gy1 = int(belt + car_h * 0.05), int(belt + car_h * 0.2)
    cv2.rectangle(img, (gx0, gy0), (gx1, gy1), (25, 25, 28), -1)
    bar = [min(255, c * 0.5 + 90) for c in body]
    step = max(4, int(car_w * rng.uniform(0.015, 0.04)))
    if rng.random() < 0.5:
        for gx in range(gx0 + step, gx1, step):
            cv2.line(img, (gx, gy0), (gx, gy1), bar, max(1, step // 3))
    else:
        for gy in range(gy0 + step, gy1, step):
            cv2.line(img, (gx0, gy), (gx1, gy), bar, max(1, step // 3))
    plate_w = car_w * 0.245 * rng.uniform(0.95, 1.05)
    plate_c = (cx + rng.normal(0, car_w * 0.01), belt + car_h * 0.32)
    cv2.rectangle(img, (x0, int(plate_c[1] + plate_w * 0.2)), (x1, int(plate_c[1] + plate_w * 0.3)),
                  [c * 0.7 for c in body], -1)
    return plate_c, plate_w


def _plate_quad(center, width, aspect, rng) -> np.ndarray:
    """Corners of a plate of this width, rolled, yawed and pitched (a perspective view)."""
    w, h = width, width / aspect
    pts = np.array([[-w / 2, -h / 2, 0], [w / 2, -h / 2, 0], [w / 2, h / 2, 0], [-w / 2, h / 2, 0]])
    yaw, pitch, roll = np.radians(rng.uniform(-35, 35)), np.radians(rng.uniform(-25, 25)), \
        np.radians(rng.uniform(-10, 10))
    cy, sy, cp, sp, cr, sr = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch), \
        math.cos(roll), math.sin(roll)
    R = (np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
         @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]]))
    p = pts @ R.T
    f = width * rng.uniform(2.5, 6.0)          # focal length: nearer cameras distort more
    p[:, 2] += f
    proj = p[:, :2] * (f / p[:, 2:3])
    return (proj + np.array(center)).astype(np.float32)


def _paste(img, plate, quad):
    """Warp the plate onto the frame (in place), only over the quad's bounding box."""
    h, w = plate.shape[:2]
    H, W = img.shape[:2]
    x0, y0 = np.floor(quad.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(quad.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    M = cv2.getPerspectiveTransform(src, (quad - np.array([x0, y0], np.float32)).astype(np.float32))
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpPerspective(plate.astype(np.float32), M, size, flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.ones((h, w), np.float32), M, size, flags=cv2.INTER_LINEAR)[..., None]
    roi = img[y0:y1, x0:x1]
    roi[:] = roi * (1 - mask) + warped * mask


def _photometry(img, rng) -> np.ndarray:
    H, W = img.shape[:2]
    # light: day, dusk, night, overexposed; a colour cast; a shadow; a glare
    gain = float(rng.choice([rng.uniform(0.3, 0.55), rng.uniform(0.6, 1.0), rng.uniform(1.0, 1.35)],
                            p=[0.2, 0.6, 0.2]))
    cast = rng.uniform(0.85, 1.15, 3)
    img = img * (gain * cast).astype(np.float32)
    if rng.random() < 0.4:
        pts = rng.integers(0, [W, H], (4, 2)).astype(np.int32)
        shade = np.ones((H, W), np.float32)
        cv2.fillPoly(shade, [cv2.convexHull(pts)], float(rng.uniform(0.45, 0.8)))
        img *= cv2.GaussianBlur(shade, (0, 0), 15)[..., None]
    if rng.random() < 0.25:
        glare = np.zeros((H, W), np.float32)
        cv2.circle(glare, (int(rng.integers(0, W)), int(rng.integers(0, H))), int(rng.integers(40, 160)),
                   float(rng.uniform(60, 160)), -1)
        img += cv2.GaussianBlur(glare, (0, 0), 40)[..., None]
    gamma = rng.uniform(0.8, 1.25)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma, 0, 255).astype(np.uint8)
    img = cv2.LUT(np.clip(img, 0, 255).astype(np.uint8), lut)
    # blur: defocus or motion
    r = rng.random()
    if r < 0.35:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.6, 1.6)))
    elif r < 0.55:
        k = int(rng.integers(3, 8))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1.0 / k
        M = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, M, (k, k))
        img = cv2.filter2D(img, -1, kernel / max(kernel.sum(), 1e-6))
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(1, 9))
    out = np.clip(img + noise, 0, 255).astype(np.uint8)
    quality = int(rng.integers(55, 96))
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def render_scene(seed: int, kind: str | None = None, plates: int = 1,
                 width: int = 1280, height: int = 720, real_plate: tuple[np.ndarray, str] | None = None) -> Scene:
    """A street-like frame with `plates` cars (0 for a frame without a plate), each plate of
    `kind` (a random kind when None). The image is BGR uint8, JPEG-compressed once.

    `real_plate` (a photographed plate crop, BGR, and its text) is placed on the one car instead
    of a rendered plate: a real plate's look (its font, wear, dirt, camera) in a rendered scene."""
    rng = np.random.default_rng([seed, 7919])
    img = _background(rng, width, height)
    truths = []
    slots = np.linspace(0, width, plates + 2)[1:-1] if plates else []
    for i, slot in enumerate(slots):
        k = kind or KINDS[int(rng.integers(0, len(KINDS)))]
        text = random_text(k, rng)
        plate_w_target = rng.uniform(110, 260) if plates == 1 else rng.uniform(100, 180)
        car_w = plate_w_target / 0.245
        cx = float(slot + rng.normal(0, width * 0.05)) if plates > 1 else float(rng.uniform(0.3, 0.7) * width)
        bottom = float(rng.uniform(0.85, 1.25) * height)
        plate_c, plate_w = _car(img, rng, cx, bottom, car_w)
        plate_img, colour = render_plate(text, k, rng)
        if real_plate is not None:
            plate_img, text = real_plate
            k, colour = "real", "other"
        aspect = plate_img.shape[1] / plate_img.shape[0]
        quad = _plate_quad(plate_c, plate_w, aspect, rng)
        if quad[:, 0].min() < 2 or quad[:, 1].min() < 2 or quad[:, 0].max() > width - 3 \
                or quad[:, 1].max() > height - 3:
            # keep the plate inside the frame: slide it (and the read still counts)
            dx = -min(0, quad[:, 0].min() - 2) - max(0, quad[:, 0].max() - (width - 3))
            dy = -min(0, quad[:, 1].min() - 2) - max(0, quad[:, 1].max() - (height - 3))
            quad = quad + np.array([dx, dy], np.float32)
        scale = max(1.0, 2 * plate_w / plate_img.shape[1])
        big = cv2.resize(plate_img, None, fx=scale, fy=scale) if scale > 1 else plate_img
        _paste(img, big.astype(np.float32), quad)
        truths.append(PlateTruth(text, colour, k, quad))
        del i
    image = _photometry(img, rng)
    return Scene(image, truths, seed)


def scene_set(n: int, start: int = 0) -> list[Scene]:
    """n scenes cycling through every kind (seed start, start+1, ...)."""
    return [render_scene(start + i, KINDS[i % len(KINDS)]) for i in range(n)]
