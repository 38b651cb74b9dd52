"""Every public function and class has a numpydoc docstring, with a Parameters section where it takes
parameters and a Returns (or Yields) section where it returns a value.

Public: the names of ``sbnnumba.__all__`` and of every public submodule (its ``__all__``, else the names
without a leading underscore defined in it). Classes are checked for a docstring and, when they define
``__init__`` with parameters, a Parameters (or, for dataclasses, Attributes) section. What fails today is
listed in ``tests/docstring_allowlist.txt``; the list may only shrink: an entry that now passes fails
the test until it is removed, and a new public name must pass.
"""
import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
import textwrap

from doc_snippets import ROOT

import sbnnumba

ALLOWLIST = ROOT / "tests" / "docstring_allowlist.txt"


def public_modules():
    modules = [sbnnumba]
    for info in pkgutil.walk_packages(sbnnumba.__path__, "sbnnumba."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            modules.append(importlib.import_module(info.name))
    return modules


def public_objects():
    """``{"module.qualname": object}`` of the public functions and classes (each once, where defined)."""
    found = {}
    for module in public_modules():
        names = getattr(module, "__all__", None)
        if names is None:
            names = [n for n, o in vars(module).items()
                     if not n.startswith("_") and getattr(o, "__module__", None) == module.__name__]
        for name in names:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return found


def _has_section(doc, *titles):
    return any(re.search(rf"^\s*{t}\s*\n\s*-{{3,}}", doc, re.MULTILINE) for t in titles)


def _returns_value(fn):
    """True when ``fn``'s own body (not nested functions) returns a value or yields."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    except (OSError, TypeError, SyntaxError):
        return False

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            if isinstance(child, (ast.Yield, ast.YieldFrom)):
                return True
            if isinstance(child, ast.Return) and child.value is not None and not (
                    isinstance(child.value, ast.Constant) and child.value.value is None):
                return True
            if visit(child):
                return True
        return False

    return visit(tree)


def _parameters(fn):
    try:
        return [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
    except (TypeError, ValueError):
        return []


def problems(obj):
    """What ``obj``'s docstring lacks (empty list: nothing)."""
    doc = inspect.getdoc(obj) or ""
    if not doc.strip():
        return ["no docstring"]
    if inspect.isclass(obj):
        if "__init__" not in vars(obj) or not _parameters(obj.__init__):
            return []
        doc += "\n" + (inspect.getdoc(obj.__init__) or "")
        titles = ("Parameters", "Attributes") if dataclasses.is_dataclass(obj) else ("Parameters",)
        return [] if _has_section(doc, *titles) else ["no Parameters"]
    out = []
    if _parameters(obj) and not _has_section(doc, "Parameters"):
        out.append("no Parameters")
    if _returns_value(obj) and not _has_section(doc, "Returns", "Yields"):
        out.append("no Returns")
    return out


def read_allowlist():
    lines = (line.split("#", 1)[0].strip() for line in ALLOWLIST.read_text().splitlines())
    return {line for line in lines if line}


def test_public_docstrings():
    failing = {name for name, obj in public_objects().items() if problems(obj)}
    allowed = read_allowlist()
    new = sorted(failing - allowed)
    fixed = sorted(allowed - failing)
    assert not new, f"public names without a complete numpydoc docstring: {new}"
    assert not fixed, f"remove these from {ALLOWLIST.name}, they pass now (or no longer exist): {fixed}"


def test_checker_sees_missing_sections():
    def documented(a):
        """Double.

        Parameters
        ----------
        a : float

        Returns
        -------
        float
        """
        return 2 * a

    def bare(a):
        """Double."""
        return 2 * a

    assert problems(documented) == []
    assert problems(bare) == ["no Parameters", "no Returns"]
