"""``python -m onnx_pathlift.cli``: the same command line as ``onnx-pathlift``."""

import sys

from .app import main

sys.exit(main())
