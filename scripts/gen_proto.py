"""Regenerate the Python gRPC stubs in services/tropd/ from proto/.

    python scripts/gen_proto.py            # rewrite services/tropd/**/*_pb2*.py(i)
    python scripts/gen_proto.py --out DIR  # write elsewhere (the staleness test compares)

Needs grpcio-tools (the `dev` extra); the pinned version makes the output reproducible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "services"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc over every .proto under proto/; return the files written (relative to out_dir)."""
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
    # Every generated folder is a regular package so setuptools finds it.
    for rel in written:
        for parent in rel.parents:
            if parent == Path("."):
                break
            (out_dir / parent / "__init__.py").touch()
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
