"""The shape of the house: which blip_core modules may need torch, no import circles inside blip_core,
and the dependency arrows (``app -> blip_core``, ``training -> blip_core``, never back; no Qt or
OpenCV in the library). docs/architecture.md draws the same picture."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIBRARY = REPO / "blip_core"

# Modules that import torch when imported. Everything else in blip_core must import in a process
# where torch cannot be imported (a Pi that runs `blip convert` folders has no torch at all).
NEEDS_TORCH = {
    "blip_core.model.blip",
    "blip_core.model.text",
    "blip_core.model.vision",
    "blip_core.model.blip2",
    "blip_core.model.qformer",
    "blip_core.model.opt",
    "blip_core.model.t5",
    "blip_core.int8.convert",
    "blip_core.int8.graphs",
    "blip_core.int8.convert_blip2",
    "blip_core.int8.graphs_blip2",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(LIBRARY.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules ``path`` imports anywhere in its body (module level or inside functions): an import
    circle through a lazy import is still two modules that need each other."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def test_torch_free_modules_import_without_torch():
    torch_free = sorted(m for m in library_modules() if m not in NEEDS_TORCH)
    script = f"""
import importlib, json, sys
sys.modules["torch"] = None  # `import torch` raises ImportError from here on
failed = {{}}
for name in {torch_free!r}:
    try:
        importlib.import_module(name)
    except ImportError as e:
        failed[name] = str(e)
print(json.dumps(failed))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout) == {}, "these modules import torch at import time; import it where it is used"
    assert len(torch_free) > 15  # the walk found the library


def test_no_import_circles_inside_blip_core():
    modules = library_modules()
    known = set(modules)
    graph = {name: {m for m in imports_of(path, name, known) if m in known and m != name}
             for name, path in modules.items()}
    cycles = strongly_connected(graph)
    assert cycles == [], f"import circles: {cycles}"


def test_dependencies_point_one_way():
    """blip_core never imports app or training, nor Qt or OpenCV; app never imports training."""
    known = set(library_modules())
    for path in sorted(LIBRARY.rglob("*.py")):
        bad = {m for m in imports_of(path, module_name(path), known)
               if m.split(".")[0] in ("app", "training", "PySide6", "cv2", "shiboken6")}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"
    for path in sorted((REPO / "app").rglob("*.py")):
        bad = {m for m in imports_of(path, module_name(path), set()) if m.split(".")[0] == "training"}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of more than one module that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_circle_finder_finds_circles():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []
