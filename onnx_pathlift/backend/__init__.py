"""Dag → ONNX graphs that run: re-emission, the lifted network, sessions, path-norms, the re-emission check."""
