"""Options are declared once: validation, per-request overrides, CLI flags, config.yml and the README come from it."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from helpers import embed

from clip_image_encoder.cli.main import build_parser
from clip_image_encoder.config.files import config_yaml, markdown_table, serving_options
from clip_image_encoder.config.options import OPTIONS, EncoderOptions
from clip_image_encoder.errors import OptionError
from clip_image_encoder.service.documents import ImageDocument
from clip_image_encoder.service.executors import CLIPImageEncoder

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "clip_image_encoder"


def test_config_yml_is_the_declared_defaults():
    assert (REPO / "config.yml").read_text() == config_yaml()


def test_readme_table_is_the_declared_options():
    assert markdown_table() in (REPO / "README.md").read_text()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": "many"}, "option batch_size must be a whole number, got 'many'"),
        ({"batch_size": 0}, "option batch_size must be at least 1"),
        ({"batch_size": 4.5}, "option batch_size must be a whole number"),
        ({"normalize": "false"}, "option normalize must be true or false, got 'false'"),
        ({"normalize": 1}, "option normalize must be true or false"),
        ({"rotation": 45}, "option rotation must be one of 0, 90, 180, 270"),
        ({"backend": "tensorflow"}, "option backend must be one of torch, onnx, torchscript"),
        ({"pretrained_model_name_or_path": ""}, "option pretrained_model_name_or_path must be a non-empty string"),
    ],
)
def test_bad_values_are_refused_naming_the_option(values, message):
    with pytest.raises(OptionError, match=message):
        EncoderOptions(**values)


def test_whole_numbers_sent_as_floats_are_accepted():
    """Jina's request parameters are a protobuf Struct, which carries every number as a float."""
    options = EncoderOptions(batch_size=4.0, embed_dim=8.0)
    assert options.batch_size == 4 and isinstance(options.batch_size, int)
    assert options.embed_dim == 8


def test_unknown_option_at_start_is_refused_with_the_list_of_options():
    with pytest.raises(OptionError, match=r"unknown option.*batchsize.*the options are: pretrained_model_name_or_path"):
        EncoderOptions.from_mapping({"batchsize": 8})


def test_a_request_overrides_only_per_request_options():
    start = EncoderOptions(batch_size=16)
    options, ignored = start.for_request({"normalize": True, "__results__": {}, "k": 10})
    assert options.normalize and options.batch_size == 16 and not start.normalize
    assert ignored == ["k"]  # another Executor's parameter: reported, Jina's own key dropped silently
    with pytest.raises(OptionError, match="option device is set when the encoder starts"):
        start.for_request({"device": "cuda"})


def test_a_bad_parameter_fails_its_request_only(executor, photos):
    with pytest.raises(OptionError, match="option normalize must be true or false"):
        embed(executor, [ImageDocument(tensor=photos["coffee"])], normalize="false")
    (doc,) = embed(executor, [ImageDocument(tensor=photos["coffee"])], normalize=True, batch_size=2.0)
    assert doc.error is None and doc.embedding is not None


def test_executor_refuses_an_unknown_option_at_start(tiny_model_dir):
    with pytest.raises(OptionError, match="unknown option"):
        CLIPImageEncoder(pretrained_model_name_or_path=str(tiny_model_dir), batchsize=8)


def test_executor_signature_names_every_option_with_its_default():
    """Jina checks config.yml's `with:` against this signature; help() shows it."""
    parameters = inspect.signature(CLIPImageEncoder.__init__).parameters
    for name, option in OPTIONS.items():
        assert parameters[name].default == option.default


def test_serve_has_a_flag_for_every_option():
    argv = ["serve"]
    for name, option in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if option.type == "bool":
            argv.append(flag if option.default else flag.replace("--", "--no-"))
        elif option.type == "tuple[str, ...]":
            argv += [flag, *option.default]
        else:
            argv += [flag, str(option.default)]
    args = build_parser().parse_args(argv)
    assert EncoderOptions(**{name: getattr(args, name) for name in OPTIONS}) == EncoderOptions()


def test_serve_reads_the_config_and_flags_override_it(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text(
        config_yaml().replace("batch_size: 32", "batch_size: 8").replace("normalize: false", "normalize: true")
    )
    args = build_parser().parse_args(["serve", "--config", str(config), "--batch-size", "4", "--keep-image-data"])
    given = {name: getattr(args, name) for name in OPTIONS if hasattr(args, name)}
    assert given == {"batch_size": 4, "keep_image_data": True}  # unset flags do not mask the config
    options = serving_options(config, given)
    assert (options.batch_size, options.normalize, options.keep_image_data) == (4, True, True)


def test_cli_flags_are_validated_like_options(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["embed", "photos", "--out", "x.csv", "--batch-size", "0"])
    assert "option batch_size must be at least 1" in capsys.readouterr().err


def test_folder_commands_leave_out_the_options_of_served_documents():
    args = build_parser().parse_args(["embed", "photos", "--out", "x.csv"])
    assert not hasattr(args, "keep_image_data") and not hasattr(args, "allow_remote_uris")
    assert args.batch_size == OPTIONS["batch_size"].default
