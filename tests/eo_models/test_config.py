"""Tokenizer configs: one pydantic model per section; typos and wrong types are one ConfigError line with the key
path, from a file, a dict or a direct call; to_dict/from_dict round-trip, config.json of earlier versions loads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from eo_models.config import (
    DecoderConfig,
    EncoderConfig,
    ModalityConfig,
    QuantizerConfig,
    TokenizerConfig,
    TrainConfig,
    load_sections,
    make_config,
)
from eo_models.errors import ConfigError

S2 = ModalityConfig(name="s2l2a", kind="continuous", bands=("B02", "B03"), mean=(1000.0, 1100.0), std=(300.0, 320.0))


def _from_file(tmp_path: Path, text: str) -> TokenizerConfig:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return make_config(load_sections(path, "s2l2a"), S2)


def test_round_trip_and_json() -> None:
    cfg = TokenizerConfig(modality=S2, quantizer=QuantizerConfig(type="vq", codebook_dim=8), name="x")
    data = cfg.to_dict()
    assert data["quantizer"]["codebook_dim"] == 8 and data["modality"]["bands"] == ("B02", "B03")
    assert TokenizerConfig.from_dict(data) == cfg
    assert TokenizerConfig.from_dict(json.loads(json.dumps(data))) == cfg  # config.json: lists for tuples
    assert TokenizerConfig.from_dict(data).modality == S2 and hash(cfg) == hash(TokenizerConfig.from_dict(data))
    assert cfg.with_train(batch_size=3).train.batch_size == 3 and cfg.train.batch_size == 8  # frozen: a copy
    with pytest.raises(AttributeError):
        cfg.train.crop = 3  # type: ignore[misc]
    # sections are (pydantic) dataclasses: dataclasses.replace works, and validates
    assert dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, patch=16)).encoder.patch == 16
    with pytest.raises(ConfigError, match=r"^encoder\.patch must be a power of two, found 12$"):
        dataclasses.replace(cfg.encoder, patch=12)


def test_config_json_of_an_earlier_version_loads() -> None:
    """A config.json written before ``train.accumulate`` existed (and with ``precision`` as written then)."""
    old = TokenizerConfig(modality=S2).to_dict()
    del old["train"]["accumulate"]
    cfg = TokenizerConfig.from_dict(json.loads(json.dumps(old)))
    assert cfg.train.accumulate == 1 and cfg.train.precision == "32"


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("train: {batchsize: 4}\n", r"^train: unknown keys \['batchsize'\]; known: \['accumulate', 'batch_size', "),
    ("encoder: {patchh: 8}\n", r"^encoder: unknown keys \['patchh'\]"),
    ("train: {crop: '64'}\n", r"^train\.crop: expected a valid integer, found '64'$"),
    ("train: {steps: 10.5}\n", r"^train\.steps: expected a valid integer, found 10\.5$"),
    ("train: {batch_size: true}\n", r"^train\.batch_size: expected a valid integer, found True$"),
    ("train: {lr: yes}\n", r"^train\.lr: expected a number, found True$"),
    ("train: {batch_size: 0}\n", r"^train\.batch_size: expected greater than or equal to 1, found 0$"),
    ("train: {precision: fp8}\n", r"^train\.precision: expected one of \['32', 'bf16', '16'\], found 'fp8'$"),
    ("quantizer: {type: pq}\n", r"^quantizer\.type: expected one of \['fsq', 'vq', 'sigmoid_fsq'\], found 'pq'$"),
    ("quantizer: {levels: 8}\n", r"^quantizer\.levels: expected a valid tuple, found 8$"),
    ("quantizer: {cosine: 'no'}\n", r"^quantizer\.cosine: expected a valid boolean, found 'no'$"),
    ("decoder: {unet_dims: [16, x]}\n", r"^decoder\.unet_dims\.1: expected a valid integer, found 'x'$"),
    ("modalities: {s2l2a: {encoder: {patch: 6}}}\n", r"^encoder\.patch must be a power of two, found 6$"),
    ("modalities: {s2l2a: {train: {cropp: 32}}}\n", r"^train: unknown keys \['cropp'\]"),
    ("train: {num_workers: -1}\n", r"^train\.num_workers must be an int >= 0 or null"),
    ("train: [1, 2]\n", r"cfg\.yaml: train: expected a mapping, found list \[1, 2\]$"),
    ("modalities: {s2l2a: {train: 3}}\n", r"cfg\.yaml: modalities\.s2l2a\.train: expected a mapping, found int 3$"),
])
def test_typos_and_wrong_types_name_the_key_path(tmp_path: Path, yaml_text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _from_file(tmp_path, yaml_text)
    assert "\n" not in str(info.value)  # one line


def test_every_problem_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _from_file(tmp_path, "train: {crop: x, batch_size: -1, foo: 1}\nencoder: {bar: 2}\n")
    text = str(info.value)
    assert "\n" not in text and text.count("; ") >= 3
    for part in ("train: unknown keys ['foo']", "encoder: unknown keys ['bar']", "train.crop: expected a valid "
                 "integer, found 'x'", "train.batch_size: expected greater than or equal to 1, found -1"):
        assert part in text


def test_sections_built_directly_name_their_section() -> None:
    with pytest.raises(ConfigError, match=r"^train\.crop: expected a valid integer, found '64'$"):
        TrainConfig(crop="64")
    with pytest.raises(ConfigError, match=r"^encoder: unknown keys \['patchh'\]"):
        EncoderConfig(patchh=8)
    with pytest.raises(ConfigError, match=r"^decoder\.type: expected one of "
                       r"\['gan', 'diffusion', 'terramind_diffusion', 'terramind_vit'\], found 'vae'$"):
        DecoderConfig(type="vae")
    with pytest.raises(ConfigError, match="quantizer.levels must be integers >= 3"):
        QuantizerConfig(levels=(8, 2))
    with pytest.raises(ConfigError, match=r"^train: expected a mapping, found list"):
        TrainConfig.from_dict([1])
    with pytest.raises(ConfigError, match=r"^train: expected a dictionary or an instance of TrainConfig, found \[1\]$"):
        TokenizerConfig.from_dict({"modality": S2, "train": [1]})
    assert TrainConfig(precision=32).precision == "32"  # YAML's bare 32
    assert TrainConfig(lr="1e-4").lr == 1e-4  # YAML 1.1 reads 1e-4 as a string


def test_the_modality_section(tmp_path: Path) -> None:
    data = TokenizerConfig(modality=S2).to_dict()
    with pytest.raises(ConfigError, match=r"^modality: unknown keys \['bnads'\]; known: \['bands', "):
        TokenizerConfig.from_dict({**data, "modality": {**data["modality"], "bnads": ["B02"]}})
    with pytest.raises(ConfigError, match=r"^modality\.kind: expected one of \['continuous', 'categorical', "
                                          r"'multilabel'\], found 'optical'$"):
        TokenizerConfig.from_dict({**data, "modality": {**data["modality"], "kind": "optical"}})
    with pytest.raises(ConfigError, match="modality s2l2a: 2 bands but 1 means"):
        TokenizerConfig.from_dict({**data, "modality": {**data["modality"], "mean": [1.0]}})
    with pytest.raises(ConfigError, match=r"^modality: required, not given$"):
        TokenizerConfig.from_dict({"train": {}})
    with pytest.raises(ConfigError, match=r"^config: unknown keys \['trian'\]"):
        TokenizerConfig.from_dict({**data, "trian": {}})
