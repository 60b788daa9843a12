"""Command-line flags derived from option declarations (`option`): the encoder's and training's alike.

Each declared field becomes ``--name-with-dashes`` (plus its aliases), typed and checked by the same
`check` as every other source of options, so a bad flag is a usage error that names the option.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from clip_image_encoder.config.options import OPTIONS, EncoderOptions, check, spec

_PARSERS: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}
"""Text to value, by the declared type, before `check`."""


def add_arguments(
    parser: argparse.ArgumentParser,
    names: Iterable[str] | None = None,
    *,
    defaults: bool = True,
    declarations: Iterable[dataclasses.Field] | None = None,
    command_defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add a flag for each named encoder option (default: all), or for each of ``declarations``.

    ``defaults=False`` leaves unset flags out of the result, so that the flags given can override another
    source (``serve`` reads ``config.yml`` first). ``command_defaults`` replaces an option's declared default for
    this command only (``duplicates`` defaults to the copy-detection model), in the flag and in its help.
    """
    command_defaults = command_defaults or {}
    for declared in declarations if declarations is not None else [OPTIONS[name] for name in names or OPTIONS]:
        _add_flag(parser, declared, defaults, command_defaults.get(declared.name, declared.default))


def _add_flag(parser: argparse.ArgumentParser, declared: dataclasses.Field, defaults: bool, value: Any) -> None:
    name, rules = declared.name, spec(declared)
    flags = [*rules.aliases, f"--{name.replace('_', '-')}"]
    default = value if defaults else argparse.SUPPRESS
    if declared.type == "bool":  # BooleanOptionalAction adds --no-NAME and the default itself
        parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=default, help=rules.help)
        return
    help_text = f"{rules.help} (default: {value})".replace("%", "%%")
    if declared.type == "tuple[str, ...]":
        parser.add_argument(*flags, dest=name, nargs="*", default=default, metavar="VALUE", help=help_text)
        return
    metavar = "{" + ",".join(map(str, rules.choices)) + "}" if rules.choices else None
    parser.add_argument(
        *flags, dest=name, type=_flag_parser(declared), default=default, metavar=metavar, help=help_text
    )


def _flag_parser(declared: dataclasses.Field) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return check(declared, _PARSERS[declared.type](text))
        except ValueError as exc:  # int(), float() or check(): argparse turns ArgumentTypeError into a usage error
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = declared.type  # argparse names the expected type after it
    return parse


def parsed_options(args: argparse.Namespace) -> EncoderOptions:
    """The encoder options that a command's flags give (`add_arguments`), the others at their defaults."""
    return EncoderOptions(**{name: getattr(args, name) for name in OPTIONS if hasattr(args, name)})
