"""YAML config files for an ``argparse`` command line: every key is a flag name, flags on the command line win.

A config file is a flat mapping ``{flag_name: value}``. Each value is converted as the flag's own ``type`` would
convert the command-line string (YAML reads ``3e-4`` as a string and ``1e6`` as a string; an ``int`` flag accepts
``1e6`` but not ``1.5``), checked against the flag's ``choices``, and becomes the parser's default, so any flag given
on the command line still overrides it. An unknown key is an error that names the closest valid flag and lists all of
them.

One setting has a third source: accelerate. :func:`resolve_mixed_precision` gives the precision of a run by this
precedence: the script's ``--mixed_precision`` on the command line; else what ``accelerate launch`` passes on
(``ACCELERATE_MIXED_PRECISION``, from its ``--mixed_precision`` or its config file) or, without the launcher,
accelerate's default config file; else the config file's value; else ``"no"``.

    parser = argparse.ArgumentParser(); parser.add_argument("--config"); ...
    args = parse_args_with_config(parser, sys.argv[1:], default_config="configs/quickstart.yaml",
                                  default_config_unless=("dataset_name", "train_files"))
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "MIXED_PRECISION_ENV",
    "accelerate_config_file",
    "command_line_value",
    "load_config_file",
    "parse_args_with_config",
    "resolve_mixed_precision",
    "str2bool",
]

MIXED_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"  # set by `accelerate launch` from its flag or its config file
_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")


def str2bool(value: str | bool) -> bool:
    """``argparse`` type for boolean flags: ``--flag true`` / ``--flag false`` (also yes/no, on/off, 1/0)."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def _flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's flags by destination name, without ``--help`` and ``--config`` itself."""
    return {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}


def _convert_one(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    try:
        if action.type is int and isinstance(value, (str, float)) and not isinstance(value, bool):
            number = float(value)  # YAML reads 1e6 as a string
            if not number.is_integer():
                raise ValueError("not an integer")
            value = int(number)
        elif action.type is not None and isinstance(value, (str, int, float, bool)):
            value = action.type(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"{source}: {key}={value!r} is not a valid value ({error}).") from error
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{source}: {key}={value!r} is not one of {list(action.choices)}.")
    return value


def _convert(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    """A YAML value as the flag's ``type`` would have parsed it from the command line (lists for ``nargs`` flags)."""
    if value is None:
        return None
    if action.nargs in ("+", "*"):
        values = value if isinstance(value, list) else [value]
        return [_convert_one(action, key, v, source) for v in values]
    return _convert_one(action, key, value, source)


def load_config_file(path: str | os.PathLike, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML config whose keys are ``parser``'s flag names and return ``{dest: converted value}``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a mapping, holds an unknown key (the message suggests the closest flag and lists
            the valid ones), or a value the flag's type or choices reject.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} not found.")
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} must hold a mapping of flag names to values, got {type(loaded).__name__}.")
    actions = _flag_actions(parser)
    unknown = sorted(set(loaded) - set(actions))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), actions, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        valid = ", ".join(sorted(actions))
        raise ValueError(f"Unknown key(s) in {path}: {', '.join(hints)}. Valid keys are the flag names: {valid}.")
    return {key: _convert(actions[key], key, value, str(path)) for key, value in loaded.items()}


def parse_args_with_config(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    *,
    default_config: str | os.PathLike | None = None,
    default_config_unless: Sequence[str] = (),
) -> argparse.Namespace:
    """Parse ``argv`` with the values of ``--config FILE`` as defaults.

    Args:
        parser: the full parser; it must define ``--config``.
        argv: the command line, without the program name.
        default_config: the config used when ``--config`` is absent and none of ``default_config_unless`` is given
            (e.g. a quickstart config that runs without arguments). ``--config none`` disables it.
        default_config_unless: flag names (destinations) whose presence on the command line means "no default
            config", e.g. the flags that name the training data.

    Returns:
        The parsed namespace; ``args.config`` is the config file actually used (or ``None``).
    """
    actions = _flag_actions(parser)
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--config", default=None)
    for name in default_config_unless:
        probe.add_argument(f"--{name}", nargs=actions[name].nargs, default=None)
    known, _ = probe.parse_known_args(list(argv))
    config_path = known.config
    if config_path is None and all(getattr(known, name) is None for name in default_config_unless):
        config_path = None if default_config is None else str(default_config)
    if config_path is not None and str(config_path).lower() != "none":
        parser.set_defaults(**load_config_file(config_path, parser))
    args = parser.parse_args(list(argv))
    args.config = config_path
    return args


def command_line_value(parser: argparse.ArgumentParser, argv: Sequence[str], dest: str) -> Any:
    """The raw value of flag ``dest`` when it is given on the command line ``argv`` itself (not through a config
    file or a default), else ``None``."""
    action = _flag_actions(parser)[dest]
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument(*action.option_strings, dest=dest, nargs=action.nargs, default=None)
    known, _ = probe.parse_known_args(list(argv))
    return getattr(known, dest)


def accelerate_config_file() -> Path:
    """accelerate's default config file (what ``accelerate config`` writes): ``$HF_HOME/accelerate/
    default_config.yaml``, with ``HF_HOME`` defaulting to ``$XDG_CACHE_HOME/huggingface`` (``~/.cache/huggingface``),
    read at call time."""
    home = os.environ.get("HF_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"))
    folder = Path(os.path.expanduser(home)) / "accelerate"
    yaml_file, json_file = folder / "default_config.yaml", folder / "default_config.json"
    return json_file if json_file.is_file() and not yaml_file.is_file() else yaml_file


def _accelerate_file_value(path: Path, key: str) -> Any:
    if not path.is_file():
        return None
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML also reads the JSON variant
    except (OSError, yaml.YAMLError):
        return None
    return loaded.get(key) if isinstance(loaded, dict) else None


def resolve_mixed_precision(
    command_line: str | None,
    config_value: str | None,
    *,
    config_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    accelerate_config: str | os.PathLike | None = None,
) -> tuple[str, str]:
    """``(precision, source)`` of a run: see the module docstring for the precedence.

    Args:
        command_line: the script's ``--mixed_precision`` as given on the command line (:func:`command_line_value`).
        config_value: the value of the script's config file, if any.
        config_file: that file, for the source's wording.
        environ: the environment (default ``os.environ``).
        accelerate_config: accelerate's config file (default :func:`accelerate_config_file`); consulted only without
            ``ACCELERATE_MIXED_PRECISION`` (``accelerate launch`` has read it already).

    Returns:
        the precision (``"no"``, ``"fp16"``, ``"bf16"``, ...) and a phrase naming where it came from, for the log.
    """
    environ = os.environ if environ is None else environ
    if command_line is not None:
        return str(command_line), "the command line (--mixed_precision)"
    launched = environ.get(MIXED_PRECISION_ENV)
    if launched:
        return launched.lower(), (f"accelerate ({MIXED_PRECISION_ENV}={launched}, set by `accelerate launch` from its "
                                  "--mixed_precision or its config file)")
    path = Path(accelerate_config) if accelerate_config is not None else accelerate_config_file()
    from_file = _accelerate_file_value(path, "mixed_precision")
    if from_file:
        return str(from_file).lower(), f"the accelerate config file {path}"
    if config_value is not None:
        return str(config_value), f"the config file {config_file}" if config_file else "the config file"
    return "no", "the default (no mixed precision)"
