"""The library's modules (scripts/k400ft/) import one another without a circle.

Every `k400ft.*` import counts, wherever it is written: at the top, under `if TYPE_CHECKING:`,
inside a function. Read from the source with `ast` (nothing is imported), so a circle that
Python resolves at run time by a late import is found too.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "scripts" / "k400ft"


def imported_modules(path: Path) -> set[str]:
    """The modules of `path`'s folder that the file imports as `k400ft.*`, anywhere in it
    (short names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "k400ft":  # from k400ft import video, augment
                names.update(f"k400ft.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return {
        name.split(".")[1]
        for name in names
        if name.startswith("k400ft.") and (path.parent / f"{name.split('.')[1]}.py").exists()
    }


def import_graph(library: Path) -> dict[str, set[str]]:
    """Each module of `library` -> the modules of `library` it imports."""
    return {path.stem: imported_modules(path) for path in sorted(library.glob("*.py"))}


def import_circle(graph: dict[str, set[str]]) -> str | None:
    """One circle of `graph` as "a -> b -> a" (each module imports the next), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        return " -> ".join(reversed(err.args[1]))  # graphlib lists it importer-last
    return None


def test_the_import_graph_sees_every_kind_of_import(tmp_path):
    (tmp_path / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from k400ft import b\n"
        "if TYPE_CHECKING:\n    from k400ft.c import Thing\n"
        "def late():\n    import k400ft.d\n"
    )
    for name in "bcd":
        (tmp_path / f"{name}.py").write_text("import os\n")
    (tmp_path / "d.py").write_text("import k400ft.video  # not a module of this folder\n")
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b", "c", "d"}, "b": set(), "c": set(), "d": set()}
    assert import_circle(graph) is None
    (tmp_path / "c.py").write_text("def late():\n    from k400ft.a import late\n")
    assert import_circle(import_graph(tmp_path)) == "a -> c -> a"
    assert import_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == "a -> b -> c -> a"


def test_no_module_of_the_library_imports_itself_back():
    graph = import_graph(LIBRARY)
    assert {"video", "models", "layouts", "finetune"} <= set(graph)  # it read the library
    circle = import_circle(graph)
    assert circle is None, f"import circle in scripts/k400ft/ (each imports the next): {circle}"
