"""The committed gRPC stubs under services/tropd/ must match what proto/ generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _gen_proto_module():  # scripts/ is not a package: load the script by path
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    written = _gen_proto_module().generate(tmp_path)
    assert written, "no .proto files found under proto/"
    stale = [
        str(rel)
        for rel in written
        if not (ROOT / "services" / rel).is_file()
        or (ROOT / "services" / rel).read_bytes() != (tmp_path / rel).read_bytes()
    ]
    assert not stale, (
        f"generated gRPC stubs are stale or missing: {', '.join(stale)}; "
        "run `python scripts/gen_proto.py` and commit the result"
    )
