"""Helpers for the tests that execute the documentation's code: the fenced ```python blocks of a page.

A block preceded by the comment ``<!-- norun -->`` (alone on its line, directly before the fence) is
not run; use it only where running is impossible on a test machine (full-data training, a GPU).
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_FENCE = re.compile(r"(?P<norun><!-- norun -->[ \t]*\n)?^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$",
                    re.MULTILINE | re.DOTALL)


def python_blocks(path):
    """The ```python blocks of ``path`` in page order, as (line number, code, runnable) triples."""
    text = Path(path).read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("norun") is None)
            for m in _FENCE.finditer(text)]


def run_page(path, namespace=None):
    """Execute the runnable blocks of a page in order, in one namespace (a page reads as one session).

    Each block is compiled with the page's name and its line numbers, so a failure's traceback points
    at the page. Returns the namespace.
    """
    namespace = {"__name__": "__doc_page__"} if namespace is None else namespace
    for line, code, runnable in python_blocks(path):
        if runnable:
            exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)
    return namespace
