"""How plate-subset.otf was made (run once by hand; not needed at run time).

    apt-get install fonts-noto-cjk            # Debian bookworm 1:20220127+repack1-1
    pip install fonttools==4.68.0             # anywhere, e.g. a scratch venv
    python edge/lpr/fonts/make_subset.py

It keeps only the glyphs the renderer draws (plate characters and a few words for street signs)
from Noto Sans CJK SC Bold, and renames the family, as the SIL Open Font License 1.1 asks of a
modified version (the original's Reserved Font Name is "Source"). Licence: OFL.txt beside it.
"""
from __future__ import annotations

import sys
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTCollection

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from edge.lpr.render import SIGN_WORDS  # noqa: E402
from edge.lpr.text import ALNUM, PROVINCES, SUFFIXES  # noqa: E402

SOURCE = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc")
FAMILY = "Gatehouse Plate Sans"


def main() -> None:
    text = PROVINCES + ALNUM + ALNUM.lower() + SUFFIXES + "使·-. " + "".join(SIGN_WORDS)
    collection = TTCollection(str(SOURCE))
    font = next(f for f in collection.fonts
                if "SC" in f["name"].getDebugName(1))          # Noto Sans CJK SC Bold
    options = subset.Options()
    options.layout_features = []
    options.name_IDs = ["*"]
    options.notdef_outline = True
    subsetter = subset.Subsetter(options)
    subsetter.populate(text="".join(sorted(set(text))))
    subsetter.subset(font)
    name = font["name"]
    for record in list(name.names):
        if record.nameID in (1, 16):
            record.string = FAMILY
        elif record.nameID == 4:
            record.string = f"{FAMILY} Bold"
        elif record.nameID == 6:
            record.string = "GatehousePlateSans-Bold"
        elif record.nameID == 3:
            record.string = "GatehousePlateSans-Bold subset of NotoSansCJKsc-Bold"
    font.save(str(HERE / "plate-subset.otf"))
    print(HERE / "plate-subset.otf", (HERE / "plate-subset.otf").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
