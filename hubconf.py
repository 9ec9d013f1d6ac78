"""torch.hub entry points of bitnetcnn; the logic lives in ``src/bitnetcnn/hub.py``.

    model = torch.hub.load("<owner>/<repo>", "bitnet_mnist", pretrained=True)       # from GitHub
    model = torch.hub.load("/path/to/checkout", "bitnet_mnist", source="local", pretrained=True)

Each entry takes ``pretrained=False, checkpoint_path=None, ternary=True, num_classes=None``; see docs/hub.md.
"""

import os as _os
import sys as _sys

dependencies = ["torch", "numpy", "safetensors"]

# torch.hub imports this file from the repository folder: use the package next to it, installed or not.
_SRC = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src")
if _os.path.isdir(_os.path.join(_SRC, "bitnetcnn")) and _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)

from bitnetcnn.hub import entrypoints as _entrypoints  # noqa: E402

globals().update(_entrypoints())
