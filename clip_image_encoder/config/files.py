"""The files derived from the option declarations, and the one reader of a Jina config's options.

``config.yml`` and ``text_config.yml`` hold every option of their Executor at its default, and the README
holds the table of options: tests keep them equal to what these functions write. ``serve`` reads a
config's ``with:`` through `serving_options`, so the served Executor and ``jina executor --uses
config.yml`` cannot drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from clip_image_encoder.config.options import OPTIONS, TEXT_ENCODER_OPTIONS, EncoderOptions, spec

DEFAULT_CONFIG = Path("config.yml")
"""What ``serve`` reads when it is given no ``--config`` and the working folder has one."""


def serving_options(config: Path | None, given: dict[str, Any]) -> EncoderOptions:
    """The ``with:`` of a Jina config file (``config.yml``), overridden by the flags given on the command line."""
    with_block: dict[str, Any] = {}
    if config is not None:
        document = yaml.safe_load(config.read_text()) or {}
        with_block = document.get("with") or {}
    return EncoderOptions.from_mapping({**with_block, **given})


def config_yaml() -> str:
    """``config.yml`` as this module declares it: every option at its default."""
    return _executor_yaml(
        "CLIPImageEncoder",
        tuple(OPTIONS),
        "CLIP image embeddings with per-Document errors, batched decoding and cpu/cuda auto-selection",
    )


def text_config_yaml() -> str:
    """``text_config.yml``: the text encoder's options at their defaults."""
    return _executor_yaml(
        "CLIPTextEncoder",
        TEXT_ENCODER_OPTIONS,
        "CLIP/SigLIP text embeddings of queries, in the image embeddings' space, with per-Document errors",
    )


def _executor_yaml(executor: str, names: tuple[str, ...], description: str) -> str:
    lines = [f"jtype: {executor}", "with:"]
    lines += [f"  {name}: {_yaml_scalar(OPTIONS[name].default)}" for name in names]
    lines += ["metas:", f"  name: {executor}", f"  description: {description}", "  py_modules:", "    - executor.py"]
    return "\n".join(lines) + "\n"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, tuple):
        return json.dumps(list(value))  # a JSON list is a YAML flow sequence
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table() -> str:
    """The README's table of options."""
    rows = ["| option | default | per request | what it does |", "| --- | --- | --- | --- |"]
    for name, option in OPTIONS.items():
        rules = spec(option)
        allowed = f" One of: {', '.join(f'`{c}`' for c in rules.choices)}." if rules.choices else ""
        rows.append(
            f"| `{name}` | `{_yaml_scalar(option.default)}` | {'yes' if rules.per_request else ''} "
            f"| {rules.help.replace('|', chr(92) + '|')}{allowed} |"
        )
    return "\n".join(rows) + "\n"
