"""The documentation: it names no machine's absolute paths (commands run from the project root, ``python
benchmarks/...``; folders are relative to it, ``../shared/zoo``); models/README.md and models.json give every
shipped model's parameter count; the quick start's command count; the tests find the zoo through
``$ONNX_PATHLIFT_ZOO``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import MODELS, ROOT, ZOO_ENV

import onnx_pathlift as pl

#: an absolute path into a home, a checkout, a scratch or temporary folder, or to a virtual environment
ABSOLUTE = re.compile(r"(?<![\w.~/])(?:/(?:work|root|home|Users|tmp|mnt|scratch|opt|srv|var/tmp)/[\w.-]"
                      r"|/(?:[\w.-]+/)*\.?venv\d*/|[A-Za-z]:\\\\?(?:Users|work)\\\\?)")


def documents() -> list[Path]:
    """Every Markdown and JSON file of docs/, and the READMEs and other Markdown files at the top of each folder."""
    docs = [p for p in (ROOT / "docs").rglob("*") if p.suffix in (".md", ".json")]
    tops = [p for folder in (ROOT, *(d for d in ROOT.iterdir() if d.is_dir() and not d.name.startswith(".")))
            for p in folder.glob("*.md")]
    return sorted(set(docs + tops))


def offending(text: str) -> list[str]:
    return [f"line {text.count(chr(10), 0, m.start()) + 1}: {text[max(0, m.start() - 20):m.end() + 30]!r}"
            for m in ABSOLUTE.finditer(text)]


def test_the_pattern_catches_what_it_should():
    for bad in ("cd /work/main && python x", "/root/.cache/x", "see /home/me/zoo", "-o /tmp/out.onnx", "/opt/venv/bin/python",
                "/work/venv/bin/python", "C:\\Users\\me", "(/tmp/x)", "`/srv/data`"):
        assert offending(bad), bad
    for fine in ("python benchmarks/bench_audit.py", "../shared/zoo", ". .venv/bin/activate", "docs/api.md",
                 "https://onnx.ai/work/x", "a /tmp folder", "1/2/3", "and/or", "ℓ∞ → ℓ1"):
        assert not offending(fine), fine


def test_docs_name_no_absolute_machine_path():
    found = {str(p.relative_to(ROOT)): hits for p in documents() if (hits := offending(p.read_text(errors="replace")))}
    assert len(documents()) > 5 and not found, found


def test_models_readme_gives_every_parameter_count():
    """The parameter count of each shipped model: the DAG's (what ``norm`` prints), but for the one exported with
    BatchNormalization folded into its convolutions (the source framework's count is larger)."""
    readme = (MODELS / "README.md").read_text()
    for m in json.loads((MODELS / "models.json").read_text())["models"]:
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{m['file']}`"))
        assert row.split(" | ")[5] == str(m["n_params"]), row
        dag = pl.import_model(MODELS / m["file"]).n_params
        assert m["n_params"] == dag or ("BN folded" in m["description"] and m["n_params"] > dag), (m["file"], dag)


def test_quick_start_counts_its_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## Quick start"):]
    heading, block = block.split("\n", 1)
    commands = [line for line in block[block.index("```bash"):].split("```")[1].splitlines()[1:] if line.strip()]
    words = {2: "two", 3: "three", 4: "four"}
    assert f"({words[len(commands)]} commands" in heading, (heading, commands)


def test_the_zoo_can_be_elsewhere(tmp_path):
    code = "import conftest; print(conftest.ZOO)"
    env = {**os.environ, ZOO_ENV: str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "tests", env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == str(tmp_path.resolve()), proc.stderr[-2000:]
