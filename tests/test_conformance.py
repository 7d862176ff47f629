"""The conformance matrix, its reports, a planted error it must catch and localise, the plugin."""

from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser
from importlib.resources import files

import jsonschema
import pytest
from cli_runner import onnxtwin
from typer.testing import CliRunner

from onnxtwin.builders import builtins, get_spec, layers
from onnxtwin.builders.families.cnn import CnnSpec
from onnxtwin.conformance.cli import app
from onnxtwin.conformance.orchestrator import CheckOptions, check
from onnxtwin.conformance.render import write_reports
from onnxtwin.conformance.report import without_timings
from onnxtwin.conformance.tolerances import Tolerances, load_tolerances
from onnxtwin.runtime import FLOAT32_ABS_TOLERANCE, OnnxtwinError, probe
from onnxtwin.runtime.comparison import Check, Comparisons
from onnxtwin.runtime.metrics import Comparison

_IMPORTED = time.perf_counter()  # an upper bound on how long any check() here can have run

SCHEMA = json.loads(files("onnxtwin.conformance").joinpath("report.schema.json").read_text())


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """check() on cnn and gru (CPU), with the reports written: (report, document, folder)."""
    out = tmp_path_factory.mktemp("report")
    report = check([get_spec("cnn"), get_spec("gru")], out, CheckOptions(timing_runs=3))
    document = report.to_dict()
    write_reports(document, out)
    return report, document, out


def test_matrix_compares_every_path_with_the_oracle_and_every_pair(checked):
    report, document, _ = checked
    assert report.passed and report.ran_on == ("cpu",)
    cnn, gru = report.models
    paths = ["torch", "keras", "torch.onnx@cpu", "keras.onnx@cpu"]
    assert [p.name for p in cnn.paths] == paths
    # per shape: 4 paths vs the oracle + 6 pairs; cnn 2 shapes, gru 2 batches x 4 lengths
    assert (len(cnn.checks), len(gru.checks)) == (2 * 10, 8 * 10)
    assert {(c.dims["batch"], c.dims["seq"]) for c in gru.checks} == {(b, s) for b in (1, 7)
                                                      for s in (1, 12, 50, 256)}
    for m in report.models:
        for c in m.checks:
            assert c.metrics.max_abs <= FLOAT32_ABS_TOLERANCE and c.metrics.nonfinite == 0
            assert c.metrics.argmax_agreement == 1.0 and c.tolerance == FLOAT32_ABS_TOLERANCE
        # needed()'s arithmetic is checked by hand below; here: one output, and a value that
        # is a real error (float32 paths do differ) within the tolerance every check passed
        needed = m.needed()
        assert set(needed) == {"logits"} and 0 < needed["logits"] <= FLOAT32_ABS_TOLERANCE
        assert m.localisation is None
        assert [t.path for t in m.latency] == paths and all(t.timing.p50_ms > 0
                                                            for t in m.latency)
    summary = dict(document["summary"])
    seconds = summary.pop("seconds")
    assert summary == {"passed": True, "models": 2, "comparisons": 100, "failed": 0}
    # the run's wall time in seconds: each model's own time lies inside it (3-decimal
    # rounding aside), and it cannot exceed the time since this module was imported
    model_seconds = [d["seconds"] for d in document["models"]]
    assert all(s > 0 for s in model_seconds)
    assert sum(model_seconds) - 0.002 <= seconds <= time.perf_counter() - _IMPORTED + 0.001


def _check(output: str, max_abs: float, nonfinite: int = 0, batch: int = 1) -> Check:
    """A hand-made comparison record: only max_abs and nonfinite matter to needed()."""
    return Check("torch", "oracle", output, {"batch": batch, "seq": 12},
                 Comparison(max_abs, max_abs, 1.0, nonfinite), FLOAT32_ABS_TOLERANCE)


def test_needed_is_the_largest_error_per_output_and_inf_where_values_were_not_finite():
    checks = (_check("logits", 3e-6), _check("logits", 7.5e-6, batch=7), _check("logits", 2e-6),
              _check("hidden", 4e-4), _check("hidden", 0.25, nonfinite=2),  # NaN/Inf seen
              _check("hidden", 1e-3), _check("exact", 0.0), _check("exact", 0.0, batch=7),
              _check("overflow", float("inf"), nonfinite=1))
    comparisons = Comparisons("oracle", checks)
    assert comparisons.needed() == {"logits": 7.5e-6, "hidden": float("inf"), "exact": 0.0,
                                    "overflow": float("inf")}
    # order does not matter, and an output's value is its own (not the overall) maximum
    assert Comparisons("oracle", checks[::-1]).needed() == comparisons.needed()
    assert Comparisons("oracle", checks[:3]).needed() == {"logits": 7.5e-6}
    assert Comparisons("oracle", ()).needed() == {}
    # "the smallest tolerance every comparison would have passed": 7.5e-6 passes all, less not
    assert all(c.metrics.passed(7.5e-6) for c in checks[:3])
    assert not all(c.metrics.passed(7.4e-6) for c in checks[:3])


def test_report_json_validates_and_names_the_providers_that_ran(checked):
    _, _, out = checked
    document = json.loads((out / "report.json").read_text())
    jsonschema.validate(document, SCHEMA)
    ran = [p["name"] for p in document["providers"] if p["ran"]]
    assert ran == ["CPUExecutionProvider"]
    cuda = next(p for p in document["providers"] if p["alias"] == "cuda")
    assert cuda["usable"] == probe("cuda").usable and cuda["reason"]
    broken = dict(document, summary={"passed": "yes"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_self_contained_with_both_plots_and_markdown_has_the_summary(checked):
    _, document, out = checked
    page = (out / "report.html").read_text()
    parser = _Tags()
    parser.feed(page)
    assert parser.tags.count("svg") == 2 and parser.tags.count("table") >= 4
    assert not {"script", "link", "img"} & set(parser.tags)  # nothing fetched from elsewhere
    text = " ".join(parser.text)
    assert "Error of each path against the float64 oracle" in text
    assert "keras.onnx@cpu" in text and "PASS" in text
    md = (out / "report.md").read_text()
    assert md.startswith("# onnxtwin conformance: PASS")
    gru = next(m for m in document["models"] if m["name"] == "gru")
    worst = max(c["max_abs"] for c in gru["comparisons"] if c["expected"] == "oracle")
    assert f"| gru | 4 | 80 | {worst:.2e} |" in md


def test_two_checks_with_the_same_arguments_report_the_same_apart_from_timings(checked,
                                                                             tmp_path):
    _, first, _ = checked
    second = check([get_spec("cnn"), get_spec("gru")], tmp_path,
                   CheckOptions(timing_runs=3)).to_dict()
    assert first["models"][0]["latency"] != second["models"][0]["latency"]  # timings do vary
    assert without_timings(second) == without_timings(first)


def test_a_planted_mapping_error_fails_with_exit_1_and_names_the_layer(tmp_path, monkeypatch):
    correct = CnnSpec.layer_maps

    def without_flatten_permutation(self):
        return [layers.dense("fc1", "fc1") if m.layer == "fc1" else m for m in correct(self)]

    monkeypatch.setattr(CnnSpec, "layer_maps", without_flatten_permutation)
    result = CliRunner().invoke(app, ["check", "--model", "cnn", "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "the twins first diverge at layer fc1 (torch) / fc1 (keras)" in result.output
    document = json.loads((tmp_path / "report.json").read_text())
    jsonschema.validate(document, SCHEMA)
    failed = {(c["actual"], c["expected"]) for c in document["models"][0]["comparisons"]
              if not c["passed"]}
    assert ("keras", "oracle") in failed and ("torch", "keras") in failed
    assert ("keras.onnx@cpu", "oracle") in failed and ("torch", "oracle") not in failed
    assert ("torch.onnx@cpu", "oracle") not in failed  # the torch side is healthy
    layers_seen = document["models"][0]["localisation"]["layers"]
    assert [x["diverged"] for x in layers_seen] == [False, False, False, True, True]
    assert "## Failures" in (tmp_path / "report.md").read_text()


def test_a_tolerance_below_float32_rounding_fails_and_reports_what_would_pass(tmp_path):
    report = check([get_spec("cnn")], tmp_path, CheckOptions(
        timing_runs=1, tolerances=Tolerances().with_default("float32", 1e-10)))
    assert not report.passed
    needed = report.models[0].needed()["logits"]
    assert 1e-10 < needed <= FLOAT32_ABS_TOLERANCE
    loose = Tolerances(models={"cnn": {"logits": needed}})
    assert check([get_spec("cnn")], tmp_path,
                 CheckOptions(timing_runs=1, tolerances=loose)).passed


def test_tolerances_from_toml_per_model_and_per_output(tmp_path):
    spec = tmp_path / "t.toml"
    spec.write_text('[models.mini]\nfamily = "cnn"\n[tolerances]\nmini = 2e-5\n'
                    '[tolerances.gru]\nlogits = 3e-5\n')
    t = load_tolerances(spec)
    assert (t.get("mini", "logits", "float32"), t.get("gru", "logits", "float32"),
            t.get("cnn", "logits", "float32")) == (2e-5, 3e-5, 1e-5)
    spec.write_text("[tolerances]\ngru = -1\n")
    with pytest.raises(OnnxtwinError, match=r"tolerances.gru: expected a positive number, "
                                            r"got -1$"):
        load_tolerances(spec)


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "nope"], r"^error: unknown model 'nope': expected one of \['cnn', "),
    (["--provider", "tpu"], r"^error: provider: expected one of \['cpu', 'cuda', 'tensorrt'\], "
                            r"got 'tpu'$"),
    (["--opset", "19"], r"^error: opset for keras: expected one of \[17, 18\], got 19$"),
] + ([] if probe("cuda").usable else [
    (["--provider", "cpu,cuda"], r"^error: provider 'cuda': expected it to run here, got: "
                                 r"onnxruntime fell back to CPU: ")]))
def test_check_usage_errors_exit_2_with_one_line(tmp_path, args, message):
    result = onnxtwin("check", *args, "--out", str(tmp_path / "r"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.match(message, lines[0]), lines[0]
    assert not (tmp_path / "r").exists()


PLUGIN_TESTS = '''
import numpy as np
from onnxtwin.builders import build_twins, sample_inputs
from onnxtwin.export import export_model

TWINS = build_twins("cnn")
X = sample_inputs(TWINS.spec, batch=4, seed=5)

def test_pair_agrees(assert_twins_agree):
    assert_twins_agree(TWINS.torch_model, TWINS.keras_model, X)

def test_pair_with_a_changed_weight(assert_twins_agree):
    kernel = TWINS.keras_model.get_layer("fc2").kernel
    kernel.assign(kernel.numpy() * 1.01)
    try:
        assert_twins_agree(TWINS.torch_model, TWINS.keras_model, X)
    finally:
        kernel.assign(kernel.numpy() / 1.01)

def test_onnx_file(assert_onnx_matches, tmp_path):
    path = export_model(TWINS, "keras", tmp_path).path
    assert_onnx_matches(path, TWINS.torch_model, X)
'''


def test_pytest_plugin_passes_agreeing_pairs_and_explains_a_failure(pytester):
    pytester.makepyfile(test_user=PLUGIN_TESTS)
    pytester.makeini("[pytest]\nonnxtwin_tolerance = 1e-5\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*AssertionError: parity failed (tolerance 1e-05 max abs):*",
        "*torch vs keras: max abs *, argmax agreement *  FAIL*",
        "*torch vs oracle: max abs *  ok*",
    ])


@pytest.mark.slow
def test_the_default_matrix_passes_on_every_builtin_model(tmp_path):
    result = onnxtwin("check", "--out", str(tmp_path), timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads((tmp_path / "report.json").read_text())
    jsonschema.validate(document, SCHEMA)
    assert [m["name"] for m in document["models"]] == [s.name for s in builtins()]
    shapes = {m["name"]: len({(c["batch"], c["seq"]) for c in m["comparisons"]})
              for m in document["models"]}
    assert shapes == {"cnn": 2, **{s.name: 8 for s in builtins() if s.family != "cnn"}}
    assert all(c["max_abs"] <= FLOAT32_ABS_TOLERANCE for m in document["models"]
               for c in m["comparisons"])
    assert len(list(tmp_path.glob("*.onnx"))) == 2 * len(builtins())
