"""Package namespaces whose names load on first access.

Importing `bitstream_diffusion` (and its subpackages) must not import torch, transformers or diffusers: command-line
tools answer `--help` at once, and `import bitstream_diffusion` stays cheap. A package lists its public names and the
module each lives in; :func:`lazy_exports` gives it the module-level `__getattr__` and `__dir__` (PEP 562) that import
the module when a name is first used.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, attributes: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of package `package`.

    Args:
        package: the package's `__name__`.
        attributes: public name -> module that defines it, relative to the package (`".modeling_sdt"`) or absolute.

    Returns:
        `(__getattr__, __dir__)`; assign both at the package's module level. A loaded name is cached in the package's
        namespace, so later lookups are plain attribute reads.
    """

    def __getattr__(name: str) -> Any:
        if name not in attributes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(attributes[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(attributes))

    return __getattr__, __dir__
