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

import bitnetcnn as _bitnetcnn  # noqa: E402

_HERE = _os.path.realpath(_os.path.join(_SRC, "bitnetcnn"))
if _os.path.isdir(_HERE) and not _os.path.realpath(_bitnetcnn.__file__).startswith(_HERE + _os.sep):
    import warnings as _warnings  # imported before from elsewhere: that copy's code and weights would be served

    _warnings.warn(f"bitnetcnn was already imported from {_os.path.dirname(_bitnetcnn.__file__)}: torch.hub serves "
                   f"that copy's models and weights, not those of {_os.path.dirname(_SRC)}; load in a fresh Python "
                   "process to use this checkout's", UserWarning, stacklevel=2)

from bitnetcnn.hub import entrypoints as _entrypoints  # noqa: E402

globals().update(_entrypoints())
