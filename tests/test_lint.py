"""The repository's lint and type gates, run by the test command so CI enforces them.

``ruff check`` (pycodestyle, pyflakes, import order; configuration in pyproject.toml) over the code, and
``mypy`` over the package (pyproject.toml's [tool.mypy]; the public API carries type hints, shipped
with ``py.typed``).
"""
import ast
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(args):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    assert ruff, "ruff is not installed: pip install -e '.[test]'"
    res = _run([ruff, "check", "sbnnumba", "tests", "bench", "examples", "tools", "conformance"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_is_clean():
    res = _run([sys.executable, "-m", "mypy", "--no-error-summary"])
    assert res.returncode == 0, res.stdout + res.stderr


# NumPy calls that Numba's parallel=True turns into a parallel region of their own when they are outside a prange
_REGION_CALLS = {"zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "arange", "sum", "prod", "max", "min",
                 "mean", "dot", "where"}
_BUILTINS = {"max", "min", "sum"}  # Python's own on scalars: no region


def _prange_loop(node):
    return isinstance(node, ast.For) and isinstance(node.iter, ast.Call) and \
        getattr(node.iter.func, "id", getattr(node.iter.func, "attr", None)) == "prange"


def _regions_outside_prange(node, found):
    """Calls of _REGION_CALLS and slice assignments in ``node`` that no prange loop encloses, as (line, code)."""
    if _prange_loop(node):
        return found
    if isinstance(node, ast.Call) and (
            isinstance(node.func, ast.Attribute) and node.func.attr in _REGION_CALLS  # np.zeros(..), x.sum()
            or isinstance(node.func, ast.Name) and node.func.id in _REGION_CALLS - _BUILTINS):  # from numpy import
        found.append((node.lineno, ast.unparse(node)))
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AugAssign) else []
    if any(isinstance(t, ast.Subscript) and any(isinstance(s, ast.Slice) for s in ast.walk(t.slice)) for t in targets):
        found.append((node.lineno, ast.unparse(node)))
    for child in ast.iter_child_nodes(node):
        _regions_outside_prange(child, found)
    return found


def _numba_kernels():
    """``(path, function, parallel)`` for every function of the package decorated with ``numba.njit`` / ``njit``
    (called or not); ``parallel``: the decorator has ``parallel=True``."""
    for path in sorted((ROOT / "sbnnumba").rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for d in fn.decorator_list:
                target = d.func if isinstance(d, ast.Call) else d
                if getattr(target, "attr", getattr(target, "id", None)) == "njit":
                    parallel = isinstance(d, ast.Call) and any(
                        k.arg == "parallel" and getattr(k.value, "value", None) is True for k in d.keywords)
                    yield path.relative_to(ROOT), fn, parallel
                    break


def test_parallel_kernels_make_no_parallel_region_outside_their_prange():
    """In an ``@numba.njit(parallel=True)`` kernel, np.zeros (and its kin), a reduction or a slice assignment outside
    the prange loops is a parallel region of its own, and at two threads each region wakes the sleeping worker (34-81
    us on the 2-core hosts: conv_cpu._ratio_factors had four regions, and the paper's stage 7 spent 0.49-0.53 ms in it
    at two threads as at one, 0.36-0.38 in one region). Kernels allocate with np.empty and fill or sum in plain loops
    instead."""
    offenders = []
    parallel_kernels = 0
    for path, fn, parallel in _numba_kernels():
        if parallel:
            parallel_kernels += 1
            found = []
            for stmt in fn.body:
                _regions_outside_prange(stmt, found)
            offenders += [f"{path}:{line} {fn.name}: {code}" for line, code in found]
    assert parallel_kernels > 10, "the parallel kernels were not found"
    assert not offenders, "\n".join(offenders)


def test_numba_kernels_copy_rows_by_loops_not_slice_assignment():
    """In a Numba kernel, ``dst[i0:i1] = src[j0:j1]`` (a slice of an array, or its ``.T``, copied into a slice)
    checks the operands' shapes and overlap per statement: on short rows that cost 1.4-4.6x a plain element loop
    (kernels/map_order.py's copies of the paper's conv maps, one thread). Fills (``acc[:] = 0``) and whole arrays
    named on the right are not flagged."""
    offenders = []
    for path, fn, _ in _numba_kernels():
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Subscript, ast.Attribute)) and any(
                    isinstance(t, ast.Subscript) and any(isinstance(s, ast.Slice) for s in ast.walk(t.slice))
                    for t in node.targets):
                offenders.append(f"{path}:{node.lineno} {fn.name}: {ast.unparse(node)}")
    assert not offenders, "\n".join(offenders)
