"""Shared locations: the shipped models, the shared zoo beside the clone, the onnx wheel's light models."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
ZOO = ROOT.parent / "shared" / "zoo"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.fixture(scope="session")
def zoo() -> Path:
    if not (ZOO / "MANIFEST.txt").is_file():
        pytest.skip(f"the shared model zoo is not at {ZOO} (it sits beside the clone in CI)")
    return ZOO
