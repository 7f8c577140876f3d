"""The layering README's "How it is built" draws, read from the source with ast.

A room is a package or subpackage of longwatch; each may import only the rooms listed for it
(itself always). Imports inside functions count too: a lazy import is still a dependency. The
one entry module, clients/main.py, may reach the command modules of the other rooms, and only
from inside functions, so that a client command never loads the server.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("proto", "memory", "model", "stream", "clients")

# room -> the rooms it may import
ALLOWED: dict[str, set[str]] = {
    "proto": set(),
    "memory": {"proto"},
    "clients": {"proto"},
    "model": {"memory"},
    "stream": {"proto", "memory", "model", "clients"},
    "model.train": {"proto", "memory", "model", "stream", "clients"},
    "model.eval": {"proto", "memory", "model", "model.train", "stream", "clients"},
}
ROOMS = sorted(ALLOWED, key=len, reverse=True)  # the longest matching room wins
ENTRY = "clients.main"
ENTRY_REACHES = {"stream.command", "model.convert", "model.train.command", "model.eval.command"}


def room_of(module: str) -> str:
    """'model.train.trainer' -> 'model.train'; 'model.loading' -> 'model'."""
    return next(r for r in ROOMS if module == r or module.startswith(r + "."))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported longwatch module without the prefix, whether at module level) for each import."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("longwatch."):
                found.append((name.removeprefix("longwatch."), id(node) in top))
    return found


def sources() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def known(module: str) -> bool:
    """Whether a dotted name is a module of ours (`from x import name` also yields x.name)."""
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_every_room_imports_only_the_rooms_below_it() -> None:
    wrong = []
    for path in sources():
        here = module_name(path)
        for target, top_level in imports(path):
            if not known(target):
                continue
            if here == ENTRY and room_of(target) != "clients":
                if target not in ENTRY_REACHES or top_level:
                    wrong.append(f"{here} -> {target} (the entry reaches command modules, lazily)")
                continue
            source_room, target_room = room_of(here), room_of(target)
            if target_room != source_room and target_room not in ALLOWED[source_room]:
                wrong.append(f"{here} -> {target}")
    assert wrong == []


def test_the_rooms_cover_every_source_file() -> None:
    for path in sources():
        assert room_of(module_name(path)) in ALLOWED


@pytest.mark.parametrize("bad", ["memory", "stream.server"])
def test_the_check_catches_an_upward_import(tmp_path: Path, bad: str) -> None:
    """The check above is not vacuous: an import it forbids is found."""
    source = tmp_path / "x.py"
    source.write_text(f"def f():\n    from longwatch.{bad} import thing\n")
    ((target, top_level),) = [i for i in imports(source) if known(i[0])]
    assert target == bad and not top_level
    assert room_of(target) not in ALLOWED["clients"]


def test_the_client_library_loads_neither_the_server_nor_the_model() -> None:
    """What `pip install longwatch` users import to talk to a service (and the client commands)."""
    code = (
        "import sys\n"
        "import longwatch.clients.client, longwatch.clients.webrtc, longwatch.clients.main\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['longwatch', 'stream'], ['longwatch', 'model'], ['longwatch', 'memory']) or m == 'torch')\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
