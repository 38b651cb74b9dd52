"""Every ```python block of the user guide (docs/guide/*.md) and README.md runs, so the docs cannot rot.

The pages use tiny settings (a few hundred images, one epoch); each page runs in its own namespace in
a temporary working directory (pages may write files such as ``model.npz``).
"""
import pytest
from doc_snippets import ROOT, python_blocks, run_page

PAGES = sorted((ROOT / "docs" / "guide").glob("*.md")) + [ROOT / "README.md"]


def test_pages_found():
    """The guide exists and most of its pages show code (a rename must not silently skip them)."""
    with_code = [p.name for p in PAGES if python_blocks(p)]
    assert {"README.md", "concepts.md", "estimators.md", "training.md", "binary.md"} <= set(with_code)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_snippets_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_page(page)


def test_norun_marker_is_honoured(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- norun -->\n```python\nraise RuntimeError('must not run')\n```\n"
                    "```python\nx = 1\n```\n")
    assert [runnable for _, _, runnable in python_blocks(page)] == [False, True]
    assert run_page(page)["x"] == 1
