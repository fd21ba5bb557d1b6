"""The import direction: loop -> teacher, student; never teacher <-> student or -> loop."""

from __future__ import annotations

import ast

import pytest

from loop.core.config import PROJECT_ROOT

FORBIDDEN = {"teacher": {"student", "loop"}, "student": {"teacher", "loop"}}


def imported_packages(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_role_packages_do_not_import_each_other_or_loop(package):
    files = sorted((PROJECT_ROOT / package).rglob("*.py"))
    assert files
    for f in files:
        bad = imported_packages(f) & FORBIDDEN[package]
        assert not bad, f"{f.relative_to(PROJECT_ROOT)} imports {bad}"


def test_the_walker_sees_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import loop.core.assets as a\nfrom student.model import load_student\nfrom . import x\n")
    assert imported_packages(f) == {"loop", "student"}


def test_no_code_path_executes_text_or_unpickles():
    """Model output is data: no package calls eval/exec/compile, unpickles, or turns
    trust_remote_code on by itself (only a preset or the user can)."""
    for f in sorted(p for pkg in ("teacher", "student", "loop") for p in (PROJECT_ROOT / pkg).rglob("*.py")):
        tree = ast.parse(f.read_text(), filename=str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"eval", "exec", "compile", "__import__"}, f
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in {"pickle", "dill", "marshal"} for n in names), f
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), f


def module_imports(path, package_root) -> set[str]:
    """The project modules a file imports, at the top, inside functions or under
    `if TYPE_CHECKING:` (absolute imports): a module is read with its annotations."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from pkg import module`
    return {n for n in names if n.split(".")[0] in package_root}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_is_part_of_an_import_cycle():
    """Every module of teacher/, student/ and loop/ can be read and tested alone: no two import
    each other, directly or around a loop, function-local imports included."""
    packages = {"teacher", "student", "loop"}
    files = sorted(f for p in packages for f in (PROJECT_ROOT / p).rglob("*.py"))
    name = {f: ".".join(f.relative_to(PROJECT_ROOT).with_suffix("").parts) for f in files}
    modules = {n.removesuffix(".__init__") for n in name.values()}
    graph = {name[f].removesuffix(".__init__"): module_imports(f, packages) & modules
             for f in files}
    assert len(graph) > 60 and "loop.tasks.arc.solve" in graph["loop.tasks.arc"]
    assert cycles(graph) == []


def test_the_import_reader_sees_imports_for_annotations_too(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\nimport loop.a\nif TYPE_CHECKING:\n"
                 "    from loop.b import B\ndef g():\n    from loop import c\n")
    assert module_imports(f, {"loop"}) == {"loop.a", "loop", "loop.b", "loop.b.B", "loop.c"}


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def entry_points() -> set[str]:
    """loop/'s `python -m` entry points: a top-level module with a `__main__` guard, or a
    package with a `__main__.py` (loop/bench/)."""
    loop_dir = PROJECT_ROOT / "loop"
    modules = {f.stem for f in loop_dir.glob("*.py")
               if 'if __name__ == "__main__":' in f.read_text()}
    return modules | {d.name for d in loop_dir.iterdir() if (d / "__main__.py").is_file()}


def test_entry_points_sit_on_top_of_the_library():
    """loop/'s top level holds the `python -m` entry points, plus the MLflow model module that
    every logged teacher imports by name; the library below them (loop/core, loop/tasks) never
    imports an entry point."""
    loop_dir = PROJECT_ROOT / "loop"
    top = {f.stem for f in loop_dir.glob("*.py")} - {"__init__"}
    entries = entry_points()
    assert top - entries == {"teacher_model", "teacher_model_code"}
    assert {"run", "evaluate", "bench", "serve", "compare", "assets", "tracking", "mstep"} <= entries
    library = sorted(f for d in ("core", "tasks") for f in (loop_dir / d).rglob("*.py"))
    assert len(library) > 30
    for f in library:
        bad = {n for n in module_imports(f, {"loop"})
               if n.count(".") >= 1 and n.split(".")[1] in entries | {"teacher_model"}}
        assert not bad, f"{f.relative_to(PROJECT_ROOT)} imports the entry point(s) {sorted(bad)}"


def core_imports_a_domain(f) -> set[str]:
    """What a loop/core file imports that core must not know: a domain (`loop.tasks`, and the
    ARC student's code), an entry point or the MLflow model module."""
    entries = entry_points() | {"teacher_model", "teacher_model_code"}
    return {n for n in module_imports(f, {"loop", "student"})
            if n == "loop.tasks" or n.startswith(("loop.tasks.", "student.arc"))
            or (n.count(".") >= 1 and n.split(".")[0] == "loop" and n.split(".")[1] in entries)}


def test_the_library_core_knows_no_domain_and_no_entry_point():
    """loop/core is the library every domain uses: it is handed the domains (loop.tasks calls
    loop.core.domain.provide) and imports none of them, nor ARC's student code, nor an entry
    point, at the top, in a function or for annotations."""
    files = sorted((PROJECT_ROOT / "loop" / "core").rglob("*.py"))
    assert len(files) > 25
    bad = {str(f.relative_to(PROJECT_ROOT)): sorted(core_imports_a_domain(f)) for f in files}
    assert {f: b for f, b in bad.items() if b} == {}


def test_the_core_import_check_sees_each_kind_of_arrow(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from loop.tasks import domain\nimport loop.tasks.squad.rows\n"
                 "def g():\n    from student.arc.augment import VIEW_TRANSFORMS\n"
                 "    from loop import bench\n    from loop.teacher_model import SelfEditWriter\n"
                 "from loop.core.domain import Domain\nfrom student.config import VIEWS\n")
    assert core_imports_a_domain(f) == {
        "loop.tasks", "loop.tasks.domain", "loop.tasks.squad.rows", "student.arc.augment",
        "student.arc.augment.VIEW_TRANSFORMS", "loop.bench", "loop.teacher_model",
        "loop.teacher_model.SelfEditWriter"}


def area(module: str) -> str:
    """The part of the project a module belongs to, for the graph `python -m tests.test_imports`
    prints: a role package (ARC's student code apart), loop's core, each domain, the benches, or
    an entry point."""
    parts = module.split(".")
    if parts[0] in ("teacher", "student"):
        return "student.arc" if parts[:2] == ["student", "arc"] else parts[0]
    if len(parts) == 1:
        return "loop"
    if parts[1] == "tasks":
        return ".".join(parts[:3]) if len(parts) > 2 and parts[2] not in ("base", "config") else "loop.tasks"
    return {"core": "loop.core", "bench": "loop.bench"}.get(parts[1], "loop.<entry>")


def is_module(root, name: str) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path, root, packages) -> set[str]:
    """The project modules a file imports: `from pkg import name` is the module pkg.name where
    that is a module, else pkg (`name` is a function or a class)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {f"{node.module}.{a.name}" if is_module(root, f"{node.module}.{a.name}")
                      else node.module for a in node.names}
    return {n for n in names if n.split(".")[0] in packages}


def area_graph(root) -> dict[tuple[str, str], int]:
    """(importer's area, imported area) -> how many (file, imported module) arrows, every import
    of teacher/, student/ and loop/ counted (function-local and annotation-only included)."""
    from collections import Counter
    from pathlib import Path

    root, packages = Path(root), {"teacher", "student", "loop"}
    edges: Counter = Counter()
    for f in sorted(x for p in packages for x in (root / p).rglob("*.py")):
        me = area(".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"))
        for n in imported_modules(f, root, packages):
            if (other := area(n)) != me:
                edges[(me, other)] += 1
    return dict(sorted(edges.items()))


def test_the_area_graph_counts_arrows_between_parts(tmp_path):
    (tmp_path / "loop" / "core").mkdir(parents=True)
    (tmp_path / "loop" / "core" / "x.py").write_text(
        "from loop.tasks.squad import absorb\nimport student.arc.ttt\ndef f():\n"
        "    from loop.tasks import domain\n    from loop.core import y\n")
    assert area_graph(tmp_path) == {("loop.core", "loop.tasks"): 1,
                                    ("loop.core", "loop.tasks.squad"): 1,
                                    ("loop.core", "student.arc"): 1}


if __name__ == "__main__":  # python -m tests.test_imports [project root]: the graph of areas
    import sys

    for (a, b), n in area_graph(sys.argv[1] if len(sys.argv) > 1 else PROJECT_ROOT).items():
        knows = a == "loop.core" and b not in ("teacher", "student")
        print(f"{a:>18} -> {b:<18} {n:>3}{'   <- core knows a domain' if knows else ''}")
