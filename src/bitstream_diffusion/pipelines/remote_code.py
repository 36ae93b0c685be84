"""The code a saved pipeline folder carries, so that diffusers and transformers load it without this package.

`pipe.save_pretrained(folder)` writes, next to the weights and configs, the package's own modules that the pipeline
needs at run time, rewritten to work as plain files of the folder (`trust_remote_code=True` loading):

* at the root, `pipeline_bitstream_diffusion.py` (the pipeline; `model_index.json` names it in `_class_name`) and
  what it imports: the output, input checks, batching, known bits, random streams, the text <-> bits codec with the
  LM1B/OWT recipes and the code tokenizer, `pipeline_folder.py` (the root `config.json`'s `auto_map`), this module
  (so that a pipeline loaded from a folder saves a complete folder again) and `atomic_io.py`;
* in `scheduler/`, `scheduling_entropy_rate.py` and its modules (`model_index.json`:
  `["scheduling_entropy_rate", "EntropyRateScheduler"]`).

`model/` (the SDT) and `code_tokenizer/` (OWT) get their code from transformers (`register_for_auto_class`), and
`model_index.json` names those files too (`["modeling_sdt", "SDTModel"]`, `["code_tokenizer", "CodeTokenizer"]`).

How a module is rewritten (one source of truth: the files are produced from the package's modules at save time):

* an import of a package module (`from ..codecs.bits import x`, `from bitstream_diffusion.utils.atomic_io import
  y`) becomes an import of the sibling file (`from .bits import x`); only whole modules are imported this way, never a
  subpackage's `__init__`;
* an import made only for type hints (`if TYPE_CHECKING:`) of a module the file does not need at run time becomes
  `pass`;
* an import inside `try:` stays an import of the package (the file then works without the package, as it must);
* every file starts with a comment naming its package module, and the location's entry module (the one diffusers
  loads) ends with an import of each module of its folder it does not import directly: diffusers copies a local
  folder's module together with the modules it imports directly, not with theirs.

A module's file does not depend on the folder it is written to, so the files of a module carried twice (`atomic_io.py`
at the root and in `scheduler/`; the code tokenizer's files at the root and in `code_tokenizer/`, where they replace
the copies transformers wrote) are identical: diffusers copies all of them into one namespace. [`check_remote_code`]
reports the files of a folder that differ from what the package writes now (a stale folder, or a copy edited by
hand).
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.atomic_io import write_text_atomic
from .pipeline_folder import write_transformers_entry_point

__all__ = [
    "REMOTE_CODE_LOCATIONS",
    "CodeLocation",
    "RemoteCodeError",
    "RemoteCodeMixin",
    "check_remote_code",
    "loaded_code_index",
    "remote_code_files",
    "remote_code_index",
    "write_remote_code",
]

#: The package this module belongs to when it runs from the installed package (not from a folder's copy).
_PACKAGE = "bitstream_diffusion"
#: Whether this module runs from the package (True) or from the copy a saved folder carries (False).
RUNNING_FROM_PACKAGE = (__package__ or "").split(".")[0] == _PACKAGE
#: Libraries `model_index.json` names by their own name (anything else is a module path or a folder's file).
_LIBRARIES = ("diffusers", "transformers", "onnxruntime")
#: The package classes a pipeline folder's components can be, by class name: loading a folder with the package's
#: pipeline class uses these instead of the folder's copies.
_PACKAGE_COMPONENTS = {
    "SDTModel": f"{_PACKAGE}.modeling.modeling_sdt",
    "EntropyRateScheduler": f"{_PACKAGE}.schedulers.scheduling_entropy_rate",
    "CodeTokenizer": f"{_PACKAGE}.codecs.code_tokenizer",
}
_CLOSURE_MARKER = "# The other modules of this folder, imported once"


class RemoteCodeError(RuntimeError):
    """A package module cannot be turned into a folder's file (an import the bundler cannot rewrite)."""


@dataclass(frozen=True)
class CodeLocation:
    """
    The code of one folder of a saved pipeline: `entries` (package modules, the first one being the module diffusers
    loads) and every package module they import at run time. An `optional` location is written only into a pipeline
    folder that has that subfolder (a component the pipeline may lack).
    """

    folder: str
    entries: tuple[str, ...]
    optional: bool = False


REMOTE_CODE_LOCATIONS = (
    CodeLocation(
        "",
        (
            f"{_PACKAGE}.pipelines.pipeline_bitstream_diffusion",
            f"{_PACKAGE}.pipelines.pipeline_folder",
            f"{_PACKAGE}.pipelines.remote_code",
        ),
    ),
    CodeLocation("scheduler", (f"{_PACKAGE}.schedulers.scheduling_entropy_rate",)),
    CodeLocation("code_tokenizer", (f"{_PACKAGE}.codecs.code_tokenizer",), optional=True),
)


# ---------------------------------------------------------------------------------------------------- imports
def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_contexts(tree: ast.Module) -> dict[int, str]:
    """`id(node) -> "type_checking" | "guarded"` for the nodes under `if TYPE_CHECKING:` or inside `try:`."""
    contexts: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            parts, context = node.body, "type_checking"
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            parts, context = [*node.body, *node.handlers], "guarded"
        else:
            continue
        for part in parts:
            for sub in ast.walk(part):
                contexts.setdefault(id(sub), context)
    return contexts


@dataclass(frozen=True)
class _Import:
    node: ast.stmt
    target: str  # the package module imported
    context: str  # "runtime", "type_checking" or "guarded"


@functools.lru_cache(maxsize=256)
def _package_imports(module: str, source: str) -> tuple[_Import, ...]:
    """The imports of package `module` (source `source`), with the package module each one names."""
    tree = ast.parse(source)
    contexts = _import_contexts(tree)
    package = module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        context = contexts.get(id(node), "runtime")
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").split(".")[0] == _PACKAGE:
                continue
            if node.module is None:
                raise RemoteCodeError(f"{module} line {node.lineno}: `from . import name` cannot be bundled; import "
                                      "from the module that defines the name.")  # fmt: skip
            target = importlib.util.resolve_name("." * node.level + node.module, package)
            found.append(_Import(node, target, context))
        elif isinstance(node, ast.Import) and any(alias.name.split(".")[0] == _PACKAGE for alias in node.names):
            if context != "guarded":
                raise RemoteCodeError(f"{module} line {node.lineno}: `import {_PACKAGE}...` cannot be bundled; use "
                                      "`from <module> import <name>`.")  # fmt: skip
    return tuple(found)


def _module_source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise RemoteCodeError(f"Cannot find the source of {module}.")
    if spec.submodule_search_locations is not None:
        raise RemoteCodeError(
            f"{module} is a package: a bundled module must import names from the module that defines them "
            f"(e.g. `from ..codecs.text_codec import TextBitCodec`, not `from ..codecs import TextBitCodec`)."
        )
    return Path(spec.origin).read_text(encoding="utf-8")


def _flat_name(module: str) -> str:
    return module.rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------------------------------- the package side
def _closure(entries: tuple[str, ...], memo: dict[str, str]) -> dict[str, str]:
    """`{package module: source}` of `entries` and every package module they import at run time, in a stable order
    (`memo` keeps the sources read so far)."""
    sources: dict[str, str] = {}
    pending = list(entries)
    while pending:
        module = pending.pop(0)
        if module in sources:
            continue
        if module not in memo:
            memo[module] = _module_source(module)
        sources[module] = memo[module]
        pending += [i.target for i in _package_imports(module, sources[module]) if i.context == "runtime"]
    names = [_flat_name(module) for module in sources]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise RemoteCodeError(f"Bundled modules {clashes} share a file name; rename one of them.")
    return sources


def _rewrite(module: str, memo: dict[str, str], entry_of: list[str] | None) -> str:
    """Package `module` as a file of a pipeline folder (the same text in every folder that carries it)."""
    needed = set(_closure((module,), memo))
    source = memo[module]
    lines = source.splitlines(keepends=True)
    for found in sorted(_package_imports(module, source), key=lambda i: i.node.lineno, reverse=True):
        node, line = found.node, lines[found.node.lineno - 1]
        if not re.match(r"\s*from\s+\S+\s+import\b", line):
            raise RemoteCodeError(f"{module} line {node.lineno}: write the import as `from <module> import ...`.")
        if found.context == "guarded":  # stays the package's: the file must work without it
            new_module = found.target
        elif found.target in needed:
            new_module = f".{_flat_name(found.target)}"
        else:  # type hints only
            indent = re.match(r"\s*", line).group(0)
            lines[node.lineno - 1 : node.end_lineno] = [f"{indent}pass  # type hints only: not in this folder\n"]
            continue
        lines[node.lineno - 1] = re.sub(r"^(\s*from\s+)\S+(\s+import\b)", rf"\g<1>{new_module}\g<2>", line, count=1)
    header = (
        f"# Written from `{module}` (bitstream-diffusion {_package_version()}) when this pipeline folder\n"
        "# was saved, to load it without the package: the package's imports are imports of the files next to this\n"
        "# one. Edit the package, not this copy (`remote_code.check_remote_code(folder)` finds edited copies).\n"
    )
    text = header + "".join(lines)
    if entry_of:
        imports = "".join(f"from .{name} import __name__ as _bundled  # noqa: E402,F401\n" for name in entry_of)
        text += (
            f"\n\n{_CLOSURE_MARKER}: diffusers copies a local folder's entry module with the modules it imports.\n"
            f"{imports}del _bundled\n"
        )
    return text


def _package_version() -> str:
    return getattr(sys.modules.get(_PACKAGE), "__version__", "unknown")


def _locations(folder: Path | None) -> list[CodeLocation]:
    """The locations a pipeline folder gets (all of them without `folder`)."""
    return [
        location
        for location in REMOTE_CODE_LOCATIONS
        if folder is None or not location.optional or (folder / location.folder).is_dir()
    ]


def _path(location: CodeLocation, name: str) -> str:
    return "/".join(filter(None, [location.folder, f"{name}.py"]))


def _package_files(folder: Path | None) -> dict[str, str]:
    files: dict[str, str] = {}
    memo: dict[str, str] = {}
    for location in _locations(folder):
        sources = _closure(location.entries, memo)
        entry = location.entries[0]
        direct = {i.target for i in _package_imports(entry, memo[entry]) if i.context == "runtime"}
        missing = sorted(_flat_name(module) for module in sources if module not in direct | {entry})
        for module in sources:
            files[_path(location, _flat_name(module))] = _rewrite(module, memo, missing if module == entry else None)
    return files


# ---------------------------------------------------------------------------------------------------- the copy's side
def _copied_files(folder: Path | None) -> dict[str, str]:
    """In a folder's copy: the files of every location, read back from the copies next to this file."""
    here = Path(__file__).parent
    files: dict[str, str] = {}
    for location in _locations(folder):
        pending, seen = [_flat_name(module) for module in location.entries], set()
        while pending:
            name = pending.pop(0)
            if name in seen:
                continue
            seen.add(name)
            text = (here / f"{name}.py").read_text(encoding="utf-8")
            files[_path(location, name)] = text
            pending += re.findall(r"^\s*from\s+\.(\w+)\s+import", text, flags=re.MULTILINE)
    return files


def remote_code_files(folder: str | os.PathLike | None = None) -> dict[str, str]:
    """
    `{path in the folder: text}` of the code a pipeline folder carries (see the module docstring): of the pipeline
    folder `folder` (whose components are saved already), or of every location.
    """
    folder = None if folder is None else Path(folder)
    return _package_files(folder) if RUNNING_FROM_PACKAGE else _copied_files(folder)


def write_remote_code(folder: str | os.PathLike) -> list[Path]:
    """Write [`remote_code_files`] into the pipeline folder `folder` (each file atomically); returns the paths."""
    return [write_text_atomic(Path(folder) / path, text) for path, text in remote_code_files(folder).items()]


def check_remote_code(folder: str | os.PathLike) -> list[str]:
    """
    What is wrong with the code of a saved pipeline folder, one line per problem (empty: it is what the package
    writes now): a missing file, a file that differs (stale, or edited by hand), or a `model_index.json` entry naming a
    file the folder lacks.
    """
    folder = Path(folder)
    problems = []
    for path, text in remote_code_files(folder).items():
        file = folder / path
        if not file.is_file():
            problems.append(f"{path}: missing")
        elif file.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from what the package writes (stale or edited); save the folder again")
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
    for name, value in index.items():
        if not _is_entry(value) or value[0].split(".")[0] in _LIBRARIES:
            continue
        if value[0].split(".")[0] == _PACKAGE:
            problems.append(f"model_index.json: {name} names {value[0]}, which only loads with the package installed")
        elif not (folder / ("" if name == "_class_name" else name) / f"{value[0]}.py").is_file():
            problems.append(f"model_index.json: {name} names {value[0]}.py, which the folder lacks")
    return problems


# ---------------------------------------------------------------------------------------------------- model_index.json
def _is_entry(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], str)


def remote_code_index(index: dict[str, Any], folder: str | os.PathLike, pipeline_class: type) -> dict[str, Any]:
    """
    `model_index.json` as a saved folder holds it: the pipeline class as `[<root file>, <class>]` and each component
    whose class is a module of its subfolder as `[<file>, <class>]` (diffusers loads those with `trust_remote_code`).
    Entries whose file the folder lacks stay as they are.
    """
    folder, index = Path(folder), dict(index)
    entry = _flat_name(pipeline_class.__module__)
    if isinstance(index.get("_class_name"), str) and (folder / f"{entry}.py").is_file():
        index["_class_name"] = [entry, index["_class_name"]]
    for name, value in index.items():
        if name.startswith("_") or not _is_entry(value) or value[0].split(".")[0] in _LIBRARIES:
            continue
        if (folder / name / f"{_flat_name(value[0])}.py").is_file():
            index[name] = [_flat_name(value[0]), value[1]]
    return index


def loaded_code_index(index: dict[str, Any], pipeline_class: type) -> dict[str, Any]:
    """
    `model_index.json` as `pipeline_class.from_pretrained` reads it: the pipeline class itself, and components from
    the code already loaded (the package's modules, or in a folder's copy the copies next to it) instead of the
    folder's files. Folders written before the folders carried code (`["bitstream_diffusion...", ...]`) load too.
    """
    index = dict(index)
    if isinstance(index.get("_class_name"), list):
        index["_class_name"] = pipeline_class.__name__
    for name, value in index.items():
        if name.startswith("_") or not _is_entry(value) or value[0].split(".")[0] in _LIBRARIES:
            continue
        library, class_name = value
        if RUNNING_FROM_PACKAGE:
            module = library if library.split(".")[0] == _PACKAGE else _PACKAGE_COMPONENTS.get(class_name)
            if module is None or _flat_name(module) != _flat_name(library):
                continue
            importlib.import_module(module)  # diffusers takes non-library modules from the ones already imported
        else:
            module = f"{__package__}.{_flat_name(library)}"
            if module not in sys.modules:
                continue
        index[name] = [module, class_name]
    return index


class RemoteCodeMixin:
    """
    Saving and loading of [`BitstreamDiffusionPipeline`] folders that carry their code: `save_config` writes the code,
    the root `config.json` and a `model_index.json` that points at the code; `from_pretrained` on this class loads a
    folder with the classes already loaded (it reads `model_index.json` through [`loaded_code_index`]).
    """

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """
        Write the folder's code ([`write_remote_code`]), the root `config.json` (for transformers, see
        `pipeline_folder`) and `model_index.json` (called by `save_pretrained` after the components are saved).
        """
        os.makedirs(save_directory, exist_ok=True)
        write_remote_code(save_directory)
        write_transformers_entry_point(save_directory)
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        index = remote_code_index(json.loads(self.to_json_string()), Path(json_file_path).parent, type(self))
        write_text_atomic(json_file_path, json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        # `download` reads model_index.json here: the pipeline is this class, not the folder's copy of it (the
        # components keep their file entries so that their files are downloaded).
        config = super()._dict_from_json_file(json_file)
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = cls.__name__
        return config

    @classmethod
    def load_config(cls, *args, **kwargs):
        loaded = super().load_config(*args, **kwargs)
        if isinstance(loaded, tuple):
            return (loaded_code_index(loaded[0], cls), *loaded[1:])
        return loaded_code_index(loaded, cls)
