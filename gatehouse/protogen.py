"""`make proto`: generate the Python code for proto/ into gatehouse/ (never edit it by hand).

`--check` regenerates into a scratch folder and fails when the committed code is stale.
"""
import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

from gatehouse.settings import ROOT

PROTO = ROOT / "proto"


def generate(out: Path) -> list[Path]:
    files = sorted(PROTO.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    for f in files:
        args = ["protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
                f"--grpc_python_out={out}", str(f)]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {f}")
    return [p.relative_to(out) for p in sorted((out / "gatehouse").rglob("*_pb2*.py*"))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if not args.check:
        for rel in generate(ROOT):
            print(f"generated {rel}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [str(rel) for rel in generate(Path(tmp))
                 if not (ROOT / rel).exists() or not filecmp.cmp(Path(tmp) / rel, ROOT / rel, shallow=False)]
    if stale:
        print("generated code is stale, run `make proto`: " + ", ".join(stale), file=sys.stderr)
        return 1
    print("generated code matches proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
