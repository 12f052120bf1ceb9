"""``python -m onnx_pathlift``: the same command line as ``onnx-pathlift``."""

import sys

from .cli.app import main

sys.exit(main())
