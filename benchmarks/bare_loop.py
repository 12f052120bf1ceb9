#!/usr/bin/env python
"""The baseline of the audit benchmark: open each model in onnxruntime and run it once.

Imports only numpy and onnxruntime, so that run as a script (``python benchmarks/bare_loop.py
FILE...``) its wall time is what a user's own minimal loop costs, interpreter start included.
Prints one JSON line: ``{"seconds": ..., "files": ..., "skipped": ...}`` (the loop alone).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def plain_feeds(sess: ort.InferenceSession, shapes: dict[str, tuple[int, ...]], rng) -> dict[str, np.ndarray]:
    """Random float32 inputs of the given static shapes (other inputs: their own, symbolic dims 1)."""
    feeds = {}
    for i in sess.get_inputs():
        shape = shapes.get(i.name) or tuple(d if isinstance(d, int) and d > 0 else 1 for d in i.shape)
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def bare_loop(files: list[str]) -> tuple[float, int]:
    """Seconds for one pass, and how many files onnxruntime could not load or run (skipped, counted)."""
    rng = np.random.default_rng(0)
    ort.set_default_logger_severity(4)  # failing runs of skipped files would log errors
    skipped = 0
    t0 = time.perf_counter()
    for path in files:
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 4
            sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
            sess.run(None, plain_feeds(sess, {}, rng))
        except Exception:  # noqa: BLE001 - any file onnxruntime refuses is skipped and counted
            skipped += 1
    return time.perf_counter() - t0, skipped


if __name__ == "__main__":
    seconds, skipped = bare_loop(sys.argv[1:])
    print(json.dumps({"seconds": seconds, "files": len(sys.argv) - 1, "skipped": skipped}))
