"""The README's "Your own models" example, run as written: its my_models.py and
my_models.toml blocks into a folder, then the command it shows, and the figures it quotes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cli_runner import onnxtwin

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    return text[start:text.index("\n## ", start + 1)]


def block(text: str, language: str, after: str) -> str:
    """The first ```language block after the line holding `after`."""
    start = text.index(after)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(text, start)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


def test_the_readme_example_runs_as_written_and_gives_its_figures(tmp_path):
    text = section("Your own models")
    (tmp_path / "my_models.py").write_text(block(text, "python", "`my_models.py`, the models"))
    (tmp_path / "my_models.toml").write_text(block(text, "toml", "`my_models.toml`, next to"))
    command = block(text, "bash", "`my_models.toml`, next to").split()
    assert command[0] == "onnxtwin"
    result = onnxtwin(*command[1:], "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    start = text.index("38 comparisons on cpu")  # the README's table, as printed
    shown = text[start:text.index("```", start)]
    for model in report["models"]:
        row = next(line.split() for line in shown.splitlines()
                   if line.split()[:1] == [model["name"]])
        against = [c["max_abs"] for c in model["comparisons"] if c["expected"] == "oracle"]
        assert row[1] == str(len(model["paths"])) and row[2] == str(len(model["comparisons"]))
        assert near(row[3], max(against)) and row[-1] == "pass", (row, max(against))
    assert report["summary"]["comparisons"] == 38
    gates = {(m["name"], e["framework"]): max(g["max_abs"] for g in e["gate"])
             for m in report["models"] for e in m["exports"]}
    quoted = re.search(r"framework: (\S+) for each CNN file, (\S+) for the tagger\)", text)
    assert sorted(gates) == [("my-tagger", "torch"), ("small-cnn", "keras"),
                             ("small-cnn", "torch")]
    for (name, _), error in gates.items():
        assert near(quoted[1 if name == "small-cnn" else 2], error), (name, error)


def near(quoted: str, measured: float) -> bool:
    """Whether a README figure is what this machine measures, within a factor of 2: the
    figures are one machine's, and float32 errors' last digits move with the CPU (PyTorch
    and onnxruntime pick their kernels by instruction set)."""
    return float(quoted) / 2 <= measured <= 2 * float(quoted)
