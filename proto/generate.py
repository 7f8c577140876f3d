"""Regenerate the Python stubs of longwatch.proto, or check that the committed ones are current.

    python -m longwatch.proto.generate            # rewrite proto/longwatch_pb2*.py(i)
    python -m longwatch.proto.generate --check    # exit 1 if they are stale

The stubs are generated code and never edited by hand. protoc is run with the proto's own
folder as the only include root, so no absolute path reaches the output, and grpcio-tools is
pinned in pyproject.toml, so the same .proto always gives the same bytes.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_NAME = "longwatch.proto"
STUB_NAMES = ("longwatch_pb2.py", "longwatch_pb2_grpc.py", "longwatch_pb2.pyi")
FIX_COMMAND = "python -m longwatch.proto.generate"

# protoc writes `import longwatch_pb2 as longwatch__pb2`, which only works with proto/ on
# sys.path; inside the package the sibling module must be imported relatively.
_ABSOLUTE_IMPORT = re.compile(r"^import (longwatch_pb2) as (\w+)$", re.MULTILINE)


class GenerateError(RuntimeError):
    """protoc failed, or grpcio-tools is missing."""


def _run_protoc(proto_dir: Path, out_dir: Path) -> None:
    """Run the protoc bundled with grpcio-tools; the include roots are relative to proto_dir."""
    try:
        from grpc_tools import protoc
    except ImportError as exc:  # grpcio-tools is a dev dependency only
        raise GenerateError("grpcio-tools is not installed: pip install 'longwatch[dev]'") from exc
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={proto_dir}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(proto_dir / PROTO_NAME),
    ]
    code = protoc.main(args)
    if code != 0:
        raise GenerateError(f"protoc exited with {code} on {proto_dir / PROTO_NAME}")


def _make_imports_relative(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    path.write_text(_ABSOLUTE_IMPORT.sub(r"from . import \1 as \2", text), encoding="utf-8")


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Write the three stub files for proto_dir/longwatch.proto into out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _run_protoc(proto_dir, out_dir)
    paths = [out_dir / name for name in STUB_NAMES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise GenerateError(f"protoc did not write {', '.join(missing)} into {out_dir}")
    _make_imports_relative(out_dir / "longwatch_pb2_grpc.py")
    return paths


def stale_stubs(stub_dir: Path = PROTO_DIR, proto_dir: Path = PROTO_DIR) -> list[str]:
    """Names of the stub files in stub_dir that differ from a fresh generation (or are missing)."""
    with tempfile.TemporaryDirectory(prefix="longwatch-stubs-") as tmp:
        fresh = generate(Path(tmp), proto_dir)
        return [p.name for p in fresh if not _same_bytes(p, stub_dir / p.name)]


def _same_bytes(a: Path, b: Path) -> bool:
    return b.is_file() and a.read_bytes() == b.read_bytes()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m longwatch.proto.generate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed stubs are stale")
    args = parser.parse_args(argv)
    try:
        if args.check:
            return check()
        for path in generate(PROTO_DIR):
            print(f"wrote {path.relative_to(PROTO_DIR.parent)}")
    except GenerateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def check(stub_dir: Path = PROTO_DIR) -> int:
    """Exit status of `--check`: 1, naming the stale files and the fix, when stub_dir is stale."""
    stale = stale_stubs(stub_dir)
    if stale:
        print(
            f"error: stubs out of date with proto/{PROTO_NAME}: {', '.join(stale)}; run `{FIX_COMMAND}`",
            file=sys.stderr,
        )
        return 1
    print(f"stubs are up to date with proto/{PROTO_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
