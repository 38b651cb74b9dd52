"""The documentation site builds with every warning an error (what ``.ci/run`` checks through this test).

Builds ``docs/`` with Sphinx into a temporary folder (a fresh build each time: an incremental build
would hide warnings of unchanged pages), then checks that the pages a reader opens first exist, that
formulas are rendered by the bundled MathJax (no network needed) and that figures are copied.
"""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_sphinx_builds_without_warnings(tmp_path):
    out = tmp_path / "html"
    res = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-E", "-d",
                          str(tmp_path / "doctrees"), "-b", "html", "docs", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    for page in ("index.html", "api.html", "spec.html", "architecture.html"):
        assert (out / page).is_file(), page
    spec = (out / "spec.html").read_text()
    assert "mathjax" in spec.lower() and "http" not in _mathjax_src(spec), "MathJax must be served locally"
    assert any((out / "_static").rglob("*.js")), "static files missing"


def _mathjax_src(html):
    """The src attribute of the script tag that loads MathJax."""
    for line in html.splitlines():
        low = line.lower()
        if "<script" in low and "mathjax" in low and "src=" in low:
            return low.split("src=", 1)[1].split()[0]
    return ""
