"""The repository's lint and type gates, run by the test command so CI enforces them.

``ruff check`` (pycodestyle, pyflakes, import order; configuration in pyproject.toml) over the code, and
``mypy`` over the package (pyproject.toml's [tool.mypy]; the public API carries type hints, shipped
with ``py.typed``).
"""
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
