"""cminet: CMINet medical image fusion, from PyTorch training to FP16 TensorRT engines.

The names below are imported lazily so that ``import cminet.runtime`` (the torch-free
device runtime, which lives under this package) never pulls in PyTorch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

# In a source checkout that is not installed (e.g. `make gpu-check` on a bare GPU machine),
# export/, runtime/ and benchmarks/ sit beside this folder. setup.cfg's package_dir maps
# exactly those three to cminet.export / cminet.runtime / cminet.benchmarks for installs;
# this finder does the same mapping for the checkout, and nothing else (the repository
# root is not added to the package path, so `cminet.tests` or `cminet.cminet` stay
# unimportable). It is consulted last, after any installed copy.
_CHECKOUT = Path(__file__).resolve().parent.parent
_MAPPED = {f"{__name__}.{part}": _CHECKOUT / part for part in ("export", "runtime", "benchmarks")}


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        folder = _MAPPED.get(fullname)
        if folder is None or not (folder / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


if not (Path(__file__).parent / "runtime").exists():  # an installed wheel has cminet/runtime/ itself
    sys.meta_path.append(_CheckoutFinder())

_LAZY = {
    "CMINet": "cminet.model",
    "CMINetConfig": "cminet.model",
    "load_pretrained": "cminet.fusion",
    "fuse_arrays": "cminet.fusion",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cminet' has no attribute {name!r}")
