"""Registration with transformers' auto classes and `pipeline()`, done when both sides are loaded.

`import bitstream_diffusion` stays cheap (command-line tools print `--help` without loading torch), yet `AutoConfig`,
`AutoModel` and `pipeline("bitstream-text-generation")` know our classes as soon as a user reaches for them. Each
piece is registered once both the transformers module that owns the registry and our module that defines the class
are loaded, whichever finishes last:

* `AutoConfig` (`"bitstream_sdt"` and the pipeline folder's root config): `transformers.models.auto.configuration_auto`
  and our `modeling.configuration_sdt` + `pipelines.pipeline_folder`;
* `AutoModel` (`SDTConfig -> SDTModel`): `transformers.models.auto.modeling_auto` and our `modeling.modeling_sdt`;
* the `pipeline()` task: `transformers.pipelines` and our `pipelines.bitstream_text_generation`.

A meta-path hook runs the registration right after the transformers module executes (importing our module then if
needed); our modules call :func:`register_when_loaded` as their last statement. A module still executing (one of the
two importing the other) is never touched: the other side registers when it finishes. This keeps every import order
working, including transformers importing `AutoModel` in the middle of loading our modeling code.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

__all__ = ["install_auto_registration", "register_when_loaded"]


def _register_configs(configuration_auto: ModuleType, configuration_sdt: ModuleType, folder: ModuleType) -> None:
    for config_class in (configuration_sdt.SDTConfig, folder.BitstreamPipelineFolderConfig):
        if config_class.model_type not in configuration_auto.CONFIG_MAPPING:
            configuration_auto.AutoConfig.register(config_class.model_type, config_class)


def _register_model(modeling_auto: ModuleType, modeling_sdt: ModuleType) -> None:
    try:
        modeling_auto.AutoModel.register(modeling_sdt.SDTConfig, modeling_sdt.SDTModel)
    except ValueError:  # already registered
        pass


def _register_task(pipelines: ModuleType, task: ModuleType) -> None:
    task.register_bitstream_text_generation_task()


@dataclass(frozen=True)
class _Piece:
    transformers_module: str
    our_modules: tuple[str, ...]
    register: Callable[..., None]


_PIECES = (
    _Piece(
        "transformers.models.auto.configuration_auto",
        ("bitstream_diffusion.modeling.configuration_sdt", "bitstream_diffusion.pipelines.pipeline_folder"),
        _register_configs,
    ),
    _Piece("transformers.models.auto.modeling_auto", ("bitstream_diffusion.modeling.modeling_sdt",), _register_model),
    _Piece("transformers.pipelines", ("bitstream_diffusion.pipelines.bitstream_text_generation",), _register_task),
)


def _is_loading(name: str) -> bool:
    """Whether module `name` is imported but still executing."""
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _is_loaded(name: str) -> bool:
    return name in sys.modules and not _is_loading(name)


def _register(piece: _Piece, finishing: str | None = None) -> None:
    """Register `piece` if its transformers module is loaded and none of our modules is still executing (but
    `finishing`, the module whose last statement calls this)."""
    if not _is_loaded(piece.transformers_module):
        return
    if any(_is_loading(name) for name in piece.our_modules if name != finishing):
        return
    ours = [importlib.import_module(name) for name in piece.our_modules]
    piece.register(sys.modules[piece.transformers_module], *ours)


def register_when_loaded(our_module: str) -> None:
    """Called by our modules as their last statement: register the pieces they define whose transformers side is
    already loaded."""
    for piece in _PIECES:
        if our_module in piece.our_modules:
            _register(piece, finishing=our_module)


class _RegisterAfterExec(importlib.abc.Loader):
    """Wraps a transformers module's loader: executes the module, then registers its piece."""

    def __init__(self, loader: importlib.abc.Loader, piece: _Piece):
        self._loader = loader
        self._piece = piece

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        module.__spec__._initializing = False  # executed: our modules may now use it
        _register(self._piece)

    def __getattr__(self, name: str):  # `get_source`, `is_package`, ... for tools that inspect loaders
        return getattr(self._loader, name)


class _AutoRegistrationFinder(importlib.abc.MetaPathFinder):
    """Finds the three transformers modules with the path finder and wraps their loaders."""

    _pieces = {piece.transformers_module: piece for piece in _PIECES}

    def find_spec(self, fullname: str, path=None, target=None):
        piece = self._pieces.get(fullname)
        if piece is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisterAfterExec(spec.loader, piece)
        return spec


def install_auto_registration() -> None:
    """Register with the transformers modules loaded already, and hook the ones not loaded yet. Idempotent."""
    if not any(isinstance(finder, _AutoRegistrationFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AutoRegistrationFinder())
    for piece in _PIECES:
        _register(piece)
