"""Bytes in, bytes out: reading model files safely (sizes checked first, external data from the model's folder
only, weights straight from the file), and writing outputs atomically."""
