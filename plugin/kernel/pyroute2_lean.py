"""Load pyroute2's netlink modules without its package's ``__init__``.

``import pyroute2`` runs a package ``__init__`` that imports every API the library has (IPDB,
NDB, conntrack, ipset, nl80211, WireGuard, plan9, ...): 163 modules, 18.7 MB of the worker's
memory on Python 3.13. The adapters here need IPRoute, NetlinkError and a few constants, which
come from submodules (``pyroute2.iproute.linux``, ``pyroute2.netlink...``): 99 modules, 14.3 MB.

``use_lean_package()`` is a step of the worker's boot (``plugin.server``), before the adapters
are imported: it registers the ``pyroute2`` package with its path but without running its
``__init__``. Submodules import as usual, also as ``from pyroute2 import config``. Should anything ask the package itself for a name
(``from pyroute2 import X``, in the library or anywhere else), the package's ``__init__`` runs
then, in place, and the name is found: the saving is lost, nothing breaks. Where this step has
not run (tests, the CLI), ``pyroute2`` is imported the ordinary way.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

PACKAGE = "pyroute2"


def use_lean_package() -> bool:
    """Register pyroute2's package without running its ``__init__``. False if it was imported
    already (nothing to save) or cannot be found (the import that follows will say so)."""
    if PACKAGE in sys.modules:
        return False
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return False
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(name: str) -> object:  # PEP 562: only for names the module lacks
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"{PACKAGE}.{name}") is not None:  # `from pyroute2 import config`
            return importlib.import_module(f"{PACKAGE}.{name}")
        del module.__dict__["__getattr__"]
        loader.exec_module(module)  # the package's own __init__, run in place, as import does
        return getattr(module, name)

    module.__dict__["__getattr__"] = __getattr__
    sys.modules[PACKAGE] = module
    return True


def is_lean(module: ModuleType | None = None) -> bool:
    """True while pyroute2's package ``__init__`` has not run (doctor, tests)."""
    module = module or sys.modules.get(PACKAGE)
    return module is not None and "__getattr__" in module.__dict__
