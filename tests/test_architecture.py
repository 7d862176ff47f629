"""The import direction of the layout: conformance -> export -> builders -> runtime.

Read from the source (every import statement, including those inside functions), so a
lazy import cannot hide a wrong direction.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = {"torch", "tensorflow", "keras", "tf2onnx"}
# package folder -> top-level names and onnxtwin packages it must never import
FORBIDDEN = {
    "runtime": FRAMEWORKS | {"onnxtwin.builders", "onnxtwin.export", "onnxtwin.conformance"},
    "builders": {"onnxtwin.export", "onnxtwin.conformance"},
    "export": {"onnxtwin.conformance"},
}


def imports(path: Path) -> set[str]:
    """Every module name an import statement in the file names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            # a relative import would hide its direction: the project never uses one
            names.add(node.module if node.level == 0 else "." * node.level + (node.module or ""))
    return names


def violations(package: str) -> list[str]:
    found = []
    for source in sorted((ROOT / package).rglob("*.py")):
        for name in imports(source):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                found.append(f"{source.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package):
    assert (ROOT / package / "__init__.py").exists()
    assert violations(package) == []


def test_the_scan_sees_lazy_imports(tmp_path):
    """The check can fail: an import inside a function is found."""
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    import torch.nn\n    from onnxtwin.export import gate\n")
    assert imports(source) == {"torch.nn", "onnxtwin.export"}


def test_runtime_serve_is_a_subpackage_of_runtime():
    """The server side lives under runtime/ and so falls under runtime's rule."""
    assert (ROOT / "runtime" / "serve" / "__init__.py").exists()


def test_no_relative_imports():
    found = [f"{p.relative_to(ROOT)} imports {n}" for folder in FORBIDDEN | {"conformance": ()}
             for p in sorted((ROOT / folder).rglob("*.py")) for n in imports(p)
             if n.startswith(".")]
    assert found == []


def test_no_bare_package_imports():
    """Always `onnxtwin.builders`, never `builders` (the folders are not import roots)."""
    bare = {"builders", "export", "runtime", "conformance"}
    found = [f"{p.relative_to(ROOT)} imports {n}"
             for folder in (*bare, "tests", "benchmarks", "scripts")
             for p in sorted((ROOT / folder).rglob("*.py"))
             for n in imports(p) if n.split(".")[0] in bare]
    assert found == []
