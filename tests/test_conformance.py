"""Conformance vectors (conformance/v1/): regeneration, the library against them, the independent checker,
and proof that a small deliberate change of a formula is caught.

* Regeneration (``tools/make_conformance.py``) must give byte-identical files. The inputs are
  seeded, dyadic and printed with Python's shortest round-trip ``repr``, so they are the same bytes on
  every machine; only expected float outputs that pass through ``exp``/``log``/``erfc`` can differ in
  their last bits between builds of the C library or NumPy's SIMD code paths. Where the bytes differ
  the test therefore still requires the same files except for such floats, and those within 1/100 of
  the case's tolerance (far tighter than what a port is held to), and says which values differed.
* The library reproduces every stored case within its tolerance (the same comparison as a port).
* ``conformance/check_numpy.py`` (which must not import sbnnumba) passes every case, in a subprocess.
* Perturbed copies of library formulas (monkeypatched, the library is not edited) fail the vectors:
  the sign convention of the PSA flip, the bit order of packing, the tie rule of the thresholds
  (``dot >= t`` vs ``dot > t``) and the sampling convention (``u < F(a)`` vs the equal-in-law
  ``u > 1 - F(a)``).
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from script_loader import ROOT, load_script

import sbnnumba as sb

V1 = ROOT / "conformance" / "v1"


make = load_script("tools/make_conformance.py", "make_conformance")
checker = load_script("conformance/check_numpy.py", "check_numpy")


def stored_cases(name):
    return json.loads((V1 / name).read_text())["cases"]


def failing_ids(fresh_files):
    """Ids of the stored cases whose outputs, recomputed by the (possibly perturbed) library, fail."""
    failed = set()
    for name, text in fresh_files.items():
        fresh = {c["id"]: c for c in json.loads(text)["cases"]}
        for stored in stored_cases(name):
            got = {k: checker.decode(v) for k, v in fresh[stored["id"]]["expected"].items()}
            if checker.compare_outputs(stored, got):
                failed.add(stored["id"])
    return failed


@pytest.fixture(scope="module")
def regenerated():
    return make.generate()


def _float_differences(stored, fresh, tol, where):
    """Walk two decoded documents; return (path, stored, fresh) of float leaves that differ. Anything
    else that differs (structure, inputs, integers, strings) fails the test at once."""
    if isinstance(stored, dict):
        assert isinstance(fresh, dict) and list(stored) == list(fresh), f"{where}: keys differ"
        if "atol" in stored:
            tol = (stored["atol"] / 100, stored["rtol"] / 100)
        out = []
        for key in stored:
            out += _float_differences(stored[key], fresh[key], tol, f"{where}/{key}")
        return out
    if isinstance(stored, list):
        assert isinstance(fresh, list) and len(stored) == len(fresh), f"{where}: lengths differ"
        return [d for i, (s, f) in enumerate(zip(stored, fresh))
                for d in _float_differences(s, f, tol, f"{where}[{i}]")]
    if stored == fresh:
        return []
    assert isinstance(stored, float) and isinstance(fresh, float) and "/expected/" in where, \
        f"{where}: {stored!r} regenerated as {fresh!r} (only expected float outputs may differ)"
    assert abs(stored - fresh) <= tol[0] + tol[1] * abs(stored), f"{where}: {stored!r} vs {fresh!r}"
    return [(where, stored, fresh)]


def test_regeneration_is_byte_identical(regenerated):
    assert sorted(regenerated) == sorted(p.name for p in V1.glob("*.json"))
    differing = {}
    for name, text in regenerated.items():
        stored = (V1 / name).read_text()
        if text != stored:  # then only last-bit float differences of expected outputs are allowed
            differing[name] = _float_differences(json.loads(stored), json.loads(text), (0.0, 0.0), name)
    if differing:  # one line: how many floats differ in each file, and the largest difference
        summary = {name: (len(d), max(abs(f - s) for _, s, f in d)) for name, d in differing.items() if d}
        warnings.warn("conformance vectors not byte-identical on this platform, float outputs within 1/100 of their "
                      "tolerance: " + ", ".join(f"{name} {n} values (largest difference {a:.1e})"
                                                for name, (n, a) in summary.items()), stacklevel=1)


def test_library_reproduces_every_case(regenerated):
    assert failing_ids(regenerated) == set()
    n_cases = sum(len(stored_cases(p.name)) for p in V1.glob("*.json"))
    assert n_cases >= 60


def test_vectors_are_small_versioned_and_complete():
    total = sum(p.stat().st_size for p in V1.rglob("*") if p.is_file())
    assert total < 2_000_000
    assert "v1" in (ROOT / "conformance" / "README.md").read_text()
    operations = set()
    for path in V1.glob("*.json"):
        doc = json.loads(path.read_text())
        assert doc["format"] == "sbnnumba-conformance" and doc["version"] == 1
        for case in doc["cases"]:
            assert {"id", "description", "inputs", "expected", "atol", "rtol", "flags"} <= set(case)
            operations.add(case["operation"])
            for name, uniforms in case["inputs"].get("uniforms", {}).items():
                assert np.all((checker.decode(uniforms) >= 0) & (checker.decode(uniforms) < 1)), name
    assert operations == set(checker.OPERATIONS)


def test_independent_checker_passes_without_importing_the_library():
    code = ("import runpy, sys\n"
            f"module = runpy.run_path({str(ROOT / 'conformance' / 'check_numpy.py')!r})\n"
            f"failures = module['check']({str(V1)!r})\n"
            "assert 'sbnnumba' not in sys.modules, 'check_numpy imported sbnnumba'\n"
            "print(len(failures), 'failures')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failures" in result.stdout


def test_checker_catches_a_sign_error_of_its_own():
    """The checker is not vacuous: its own PSA flip with the opposite sign fails the PSA cases only."""
    case = next(c for c in stored_cases("gradients.json") if c["id"] == "psa/dense-logistic")
    original = checker.cdf_diff
    try:
        checker.cdf_diff = lambda noise, u, v: -original(noise, u, v)
        assert checker.compare_outputs(case, checker.run_case(case))
    finally:
        checker.cdf_diff = original
    assert not checker.compare_outputs(case, checker.run_case(case))


def test_flip_sign_convention_change_is_caught(monkeypatch):
    for cls in (sb.Linear, sb.Conv2d):
        original = cls.flip_propagate
        monkeypatch.setattr(cls, "flip_propagate",
                            lambda self, *args, _f=original, **kw: -_f(self, *args, **kw))
    failed = failing_ids(make.generate(["gradients"]))
    psa = {c["id"] for c in stored_cases("gradients.json") if c["operation"] == "estimator.psa"}
    assert failed == psa  # every PSA case, and no ST case (ST has no flips)


def test_bit_order_change_is_caught(monkeypatch):
    original = sb.bitpack.pack

    def msb_first(x):  # element i in bit 63 - i % 64: the other common convention
        words = original(x)
        bits = np.unpackbits(words.view(np.uint8), bitorder="little").reshape(words.shape + (64,))
        return np.packbits(bits[..., ::-1], bitorder="little").view(np.uint64).reshape(words.shape)

    monkeypatch.setattr(sb.bitpack, "pack", msb_first)
    failed = failing_ids(make.generate(["bitpack"]))
    # pack_channels packs with pack; the bit-planes have their own packing
    assert failed == {c["id"] for c in stored_cases("bitpack.json") if c["operation"] != "bitpack.pack_planes"}


def test_threshold_tie_rule_change_is_caught(monkeypatch):
    """``dot > t`` instead of ``dot >= t``: the smallest change of an integer rule (one unit at a tie)."""
    original = sb.bitpack.matmul_threshold
    monkeypatch.setattr(sb.bitpack, "matmul_threshold",
                        lambda a, b, k, thresholds, flip=None: original(a, b, k, np.floor(thresholds) + 1, flip))
    failed = failing_ids(make.generate(["xnor"]))
    assert failed and all(i.startswith("matmul-threshold/") for i in failed)


def test_unstable_cdf_difference_is_caught(monkeypatch):
    """``F(u) - F(v)`` taken literally (two numbers near 1 in the upper tail) instead of the stable form."""
    from sbnnumba.kernels import reference

    monkeypatch.setattr(reference, "cdf_diff", lambda noise, u, v: noise.cdf(u) - noise.cdf(v))
    failed = failing_ids(make.generate(["noise"]))
    tails = {c["id"] for c in stored_cases("noise.json") if c["id"].endswith("cdf-diff-tails")}
    # uniform noise's (1 + u) / 2 - (1 + v) / 2 near u = 1 happens to stay within 1e-12 on these pairs
    assert tails - {"noise/uniform/cdf-diff-tails"} <= failed <= tails


def test_sampling_convention_change_is_caught(monkeypatch):
    """``x = +1 iff u > 1 - F(a)`` has the same law as ``u < F(a)`` but other samples from the same uniforms."""
    def mirrored(self, a, u):
        return np.where(np.asarray(u) > 1 - self.cdf(a), 1.0, -1.0).astype(np.asarray(a).dtype)

    for family in sb.NOISES.values():
        monkeypatch.setattr(type(family), "sample", mirrored)
    monkeypatch.setattr(make, "STRICT", False)  # other samples may come near a tie; not the point here
    failed = failing_ids(make.generate(["noise", "forward"]))
    assert {c["id"] for c in stored_cases("forward.json")} <= failed
    assert {c["id"] for c in stored_cases("noise.json") if c["operation"] == "noise.sample"} <= failed


def _resolve(dotted):
    """The object named ``sbnnumba.module.attr...`` (imports the longest module prefix)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def test_spec_names_existing_functions_and_tests():
    """docs/spec.md names the function and the test of each formula: they must exist (a refactor that
    moves one updates the spec)."""
    import re

    text = (ROOT / "docs" / "spec.md").read_text()
    sources = {p.name: p.read_text() for p in (ROOT / "tests").glob("*.py")}
    every_test = "\n".join(sources.values())
    for file, name in re.findall(r"tests/(\w+\.py)::(\w+)", text):
        assert f"def {name}(" in sources[file], f"docs/spec.md: tests/{file}::{name} does not exist"
    for name in set(re.findall(r"`(test_\w+)`", text)):
        assert f"def {name}(" in every_test, f"docs/spec.md: no test named {name}"
    for dotted in set(re.findall(r"`(sbnnumba(?:\.\w+)+)", text)):
        _resolve(dotted)
    assert "class ReplayGenerator(" in (ROOT / "tools" / "make_conformance.py").read_text()
