"""The exporter corpus of tools/coverage.py (issue 14), on its exporter-idiom models (torch left to
docs/coverage.md, which runs both torch exporters): every variant onnxruntime runs (onnxsim, the
offline optimiser at three levels, the quantizer's QDQ / QOperator / dynamic outputs) is either analysed
with the re-emission check passing, or refused with the offending nodes named; never an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_tool


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[list[Path], dict[str, str]]:
    pytest.importorskip("onnxruntime.quantization")
    return load_tool("exporter_corpus").generate(tmp_path_factory.mktemp("corpus"), with_torch=False)


def test_exporter_corpus_imports_or_refuses_by_name(corpus) -> None:
    files, skipped = corpus
    coverage = load_tool("coverage")
    variants = {f.name.split("__")[1].removesuffix(".onnx") for f in files}
    assert {"float", "ort_basic", "ort_extended", "ort_all", "qdq_per_tensor", "qdq_per_channel",
            "qdq_weights_only_per_channel", "qoperator_per_tensor", "dynamic_per_tensor"} <= variants, (variants, skipped)
    statuses = {}
    for f in files:
        row = coverage.analyse(str(f))
        statuses[f.name] = row["status"]
        assert row["status"] in ("ok", "refused"), (f.name, row.get("reason"))
        if row["status"] == "refused":
            assert row["refusals"] and all(node and node != "<graph>" for node, _, _ in row["refusals"]), (f.name, row)
    float_like = [n for n in statuses if n.split("__")[1].split(".")[0] in
                  ("float", "onnxsim", "ort_basic", "ort_extended", "qdq_per_tensor", "qdq_per_channel",
                   "qdq_weights_only_per_channel")]
    assert float_like and all(statuses[n] == "ok" for n in float_like), statuses
