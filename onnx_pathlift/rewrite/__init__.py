"""Dag → Dag rewrites that ask the op declarations: without biases, two streams, cuts, one canonical spelling."""
