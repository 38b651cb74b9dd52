"""The import layering of docs/architecture.md ("Layers of the package and backends"): no module of
sbnnumba imports a module of a higher level, and nothing outside backends/ compares backend names."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "sbnnumba"

LEVELS = {  # the table of docs/architecture.md
    6: ("cli", "__main__", "gradstudy"),
    5: ("training", "packed", "plots", "datasets", "testing", "export", "distributed",
        "sweep"),
    4: ("estimators",),
    3: ("network", "architectures", "optim", "summary"),
    2: ("layers", "conv", "normalization", "weights", "bitpack"),
    1: ("backends",),
    0: ("kernels", "noise", "validation", "fileio", "runtime", "blockpool", "uniforms", "progress", "inputs", "losses"),
}
LEVEL = {name: level for level, names in LEVELS.items() for name in names}


def _top(path):
    part = path.relative_to(ROOT).parts[0]
    return part[:-3] if part.endswith(".py") else part


def _imported_tops(path):
    """Top-level sbnnumba modules imported (relative imports resolved) by one file."""
    package = list(path.relative_to(ROOT).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[:len(package) - (node.level - 1)]
            parts = base + (node.module.split(".") if node.module else [])
            yield from ([parts[0]] if parts else [alias.name for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sbnnumba."):
            yield node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            yield from (a.name.split(".")[1] for a in node.names if a.name.startswith("sbnnumba."))


def test_no_module_imports_a_higher_level():
    bad = []
    for path in ROOT.rglob("*.py"):
        top = _top(path)
        if top == "__init__":
            continue
        assert top in LEVEL, f"{path}: add {top!r} to the layering table (docs/architecture.md and this test)"
        bad += [f"{path.relative_to(ROOT)} imports {name} (level {LEVEL[name]} > {LEVEL[top]})"
                for name in _imported_tops(path) if name in LEVEL and LEVEL[name] > LEVEL[top]]
    assert not bad, "\n".join(bad)


def test_backend_names_are_compared_only_in_backends():
    pattern = re.compile(r"""backend(\.name)?\s*[!=]=\s*["'](cpu|cuda|numpy|reference)["']""")
    hits = [f"{p.relative_to(ROOT)}" for p in ROOT.rglob("*.py")
            if _top(p) != "backends" and pattern.search(p.read_text())]
    assert not hits, hits
