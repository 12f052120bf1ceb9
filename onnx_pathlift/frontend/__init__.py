"""ONNX → Dag: input shapes and spec checks, constant folding, fused ops written back, the importer."""
