"""The import direction: loop -> teacher, student; never teacher <-> student or -> loop."""

from __future__ import annotations

import ast

import pytest

from loop.config import PROJECT_ROOT

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
    f.write_text("import loop.assets as a\nfrom student.model import load_student\nfrom . import x\n")
    assert imported_packages(f) == {"loop", "student"}
