"""Lazy re-exports for the subpackages' ``__init__`` files.

Each subpackage lists its public names by module; a name is imported from its module when first used. Importing
a subpackage therefore imports neither torch nor its sibling modules (3D Slicer imports the worker and bridge
modules without torch), and the one-way imports between modules stay what they are, whatever is imported first.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Sequence, Tuple


def lazy_exports(package: str, exports: Dict[str, Sequence[str]]) -> Tuple[Callable[[str], Any],
                                                                            Callable[[], List[str]], List[str]]:
    """The ``__getattr__``, ``__dir__`` and ``__all__`` of a package that re-exports ``exports``.

    Args:
        package: the package's ``__name__``.
        exports: module name (relative to the package) -> the public names it defines.

    Returns:
        ``(__getattr__, __dir__, __all__)`` for the package's namespace.

    Raises:
        ValueError: when two modules export the same name.
    """
    owner: Dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in owner:
                raise ValueError(f"{package}: {name} is exported by both {owner[name]} and {module}")
            owner[name] = module

    def __getattr__(name: str) -> Any:
        if name in owner:
            return getattr(importlib.import_module(f"{package}.{owner[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> List[str]:
        return sorted(owner)

    return __getattr__, __dir__, sorted(owner)
