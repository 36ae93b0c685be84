"""YAML config files for an ``argparse`` command line: every key is a flag name, flags on the command line win.

A config file is a flat mapping ``{flag_name: value}``. Each value is converted as the flag's own ``type`` would
convert the command-line string (YAML reads ``3e-4`` as a string and ``1e6`` as a string; an ``int`` flag accepts
``1e6`` but not ``1.5``), checked against the flag's ``choices``, and becomes the parser's default, so any flag given
on the command line still overrides it. An unknown key is an error that names the closest valid flag and lists all of
them.

    parser = argparse.ArgumentParser(); parser.add_argument("--config"); ...
    args = parse_args_with_config(parser, sys.argv[1:], default_config="configs/quickstart.yaml",
                                  default_config_unless=("dataset_name", "train_files"))
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_config_file", "parse_args_with_config", "str2bool"]

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
