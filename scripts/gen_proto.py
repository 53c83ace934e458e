"""Regenerate the Python gRPC stubs in services/tropd/wire/ from proto/.

    python scripts/gen_proto.py            # rewrite services/tropd/wire/v1/*_pb2*.py(i)
    python scripts/gen_proto.py --out DIR  # write elsewhere (the staleness test compares)

The proto package is `tropd.teacher.v1` (what travels on the wire: `/tropd.teacher.v1.Teacher/
Score`), but in Python `tropd.teacher` is the teacher service, so the stubs live in the neutral
`tropd.wire.v1`. protoc names Python modules after the .proto's path and has no option to
prefix them, so the one generated import line is rewritten here.

Needs grpcio-tools (the `dev` extra); the pinned version makes the output reproducible.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "services"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


_PROTO_PACKAGE = Path("tropd/teacher")  # where protoc puts modules of package tropd.teacher.*
_PYTHON_PACKAGE = Path("tropd/wire")  # where they live in the tropd namespace


def _relocate(generated: Path, out_dir: Path, rel: Path) -> Path:
    """Copy one generated file from tropd/teacher/... to tropd/wire/..., fixing its imports."""
    target_rel = _PYTHON_PACKAGE / rel.relative_to(_PROTO_PACKAGE)
    text = (generated / rel).read_text()
    text = text.replace("from tropd.teacher.", "from tropd.wire.")
    (out_dir / target_rel).parent.mkdir(parents=True, exist_ok=True)
    (out_dir / target_rel).write_text(text)
    return target_rel


def generate(out_dir: Path) -> list[Path]:
    """Run protoc over every .proto under proto/; return the files written (relative to out_dir)."""
    with tempfile.TemporaryDirectory() as tmp:
        generated = Path(tmp)
        rels = _protoc(generated)
        written = [_relocate(generated, out_dir, rel) for rel in rels]
    # Every generated folder is a regular package (tropd/ and tropd/wire/ are hand-written).
    for rel in written:
        init = out_dir / rel.parent / "__init__.py"
        if not init.exists():
            init.touch()
    return written


def _protoc(out_dir: Path) -> list[Path]:
    """Run protoc into `out_dir`; return the generated files relative to it."""
    import grpc_tools
    from grpc_tools import protoc  # dev-only dependency

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_DIR)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for rel in files:
        stem = Path(rel).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            written.append(Path(f"{stem}{suffix}"))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output root (default: services/)"
    )
    args = parser.parse_args()
    for path in generate(args.out):
        print(args.out / path)


if __name__ == "__main__":
    sys.exit(main())
