"""``generate`` and ``embed`` (``--fusion`` and ``--backbone``) writing to a real S3-protocol server on loopback
(moto): the same arrays as a local run, a run cut short publishes nothing and resumes, readers (``CubeDataset``) see
the published store, and the credentials are written nowhere."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vector_quantize_pytorch")
pytest.importorskip("diffusers")
pytest.importorskip("icechunk")

import boto3  # noqa: E402
import xarray as xr  # noqa: E402

from eo_dataset.cube.manifest import done_blocks  # noqa: E402
from eo_dataset.cube.storage import MAIN, open_repo, open_version  # noqa: E402
from eo_dataset.errors import CubeError  # noqa: E402
from eo_dataset.torch import CubeDataset  # noqa: E402
from eo_models.backbones.embed import embed_cube_with_backbone  # noqa: E402
from eo_models.cli.main import main  # noqa: E402
from eo_models.errors import ConfigError  # noqa: E402
from eo_models.fusion import aligned  # noqa: E402
from eo_models.fusion.apply import embed_cube, generate_cube  # noqa: E402
from eo_models.fusion.config import TokenModality, load_fusion_config  # noqa: E402
from eo_models.fusion.generation import Schedule  # noqa: E402
from eo_models.fusion.model import FusionModel  # noqa: E402
from eo_models.tokens.online import OnlineTokens  # noqa: E402
from eo_models.tokens.versioned import WRITE_BRANCH  # noqa: E402
from tests.eo_dataset.cube import conftest as s3_server  # noqa: E402
from tests.eo_models.backbones.test_embed_cube import tiny  # noqa: E402
from tests.eo_models.tokens import conftest as token_fixtures  # noqa: E402

# fixtures of other test packages: the loopback S3 server, micro tokenizers trained on the demo cube
s3_env = s3_server.s3_env
SECRET = s3_server.SECRET
micro, package_one_thread = token_fixtures.micro, token_fixtures.package_one_thread
tokenizers, caption_tokenizer = token_fixtures.tokenizers, token_fixtures.caption_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BUCKET = "eo-cubes"
SMALL = """\
name: test
model: {dim: 32, encoder_depth: 1, decoder_depth: 1, heads: 2}
masking: {input_tokens: 32, target_tokens: 32}
train: {batch_size: 4, steps: 1}
"""
GENERATE = {"source": "s2l2a", "target": "lulc,caption", "schedule": Schedule(steps=2), "batch_size": 16,
            "progress": False}


def _url(name: str) -> str:
    return f"s3://{BUCKET}/applied/{uuid.uuid4().hex[:10]}/{name}"


@pytest.fixture(scope="module")
def fusion(demo_cube: Path, tokenizers: dict[str, Path], caption_tokenizer: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fusion model with random weights over the micro tokenizers (s2l2a, lulc) and the caption tokenizer."""
    root = tmp_path_factory.mktemp("fusion-s3")
    (root / "small.yaml").write_text(SMALL)
    specs = OnlineTokens(demo_cube, [tokenizers["s2l2a"], tokenizers["lulc"], caption_tokenizer]).specs
    torch.manual_seed(0)
    model = FusionModel(load_fusion_config(root / "small.yaml", [TokenModality.from_spec(s) for s in specs.values()]))
    model.save_pretrained(root / "model")
    return root / "model"


def _same(url: str, local: Path) -> None:
    remote, here = xr.open_zarr(open_version(url), consolidated=False), xr.open_zarr(local)
    assert set(remote.variables) == set(here.variables)
    for name in here.variables:
        a, b = remote[name].values, here[name].values
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert remote.attrs == here.attrs and remote.attrs["complete"] is True


def _history(url: str) -> list[str]:
    return [s.message for s in open_repo(url).ancestry(branch=MAIN)]


def test_generate_to_s3_equals_local_and_resumes(s3_env, fusion, demo_cube, tmp_path, monkeypatch) -> None:
    local = tmp_path / "gen.zarr"
    assert generate_cube(fusion, demo_cube, local, **GENERATE) == local
    url = _url("gen.zarr")
    real, calls = aligned.mark_done, []

    def dies_in_the_second_block(where, index, entry, sub="blocks"):  # a kill inside the second block's commit
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(where, index, entry, sub=sub)

    monkeypatch.setattr(aligned, "mark_done", dies_in_the_second_block)
    with pytest.raises(KeyboardInterrupt):
        generate_cube(fusion, demo_cube, url, **GENERATE)
    monkeypatch.undo()
    assert done_blocks(open_repo(url).readonly_session(branch=WRITE_BRANCH).store, "generated") == {0}
    with pytest.raises(CubeError, match="no finished"):
        open_version(url)  # readers see nothing until the store is complete
    assert generate_cube(fusion, demo_cube, url, **GENERATE) == url
    _same(url, local)
    history = _history(url)
    assert history[0].startswith("eo-models: finished generated of 32 samples")
    assert generate_cube(fusion, demo_cube, url, **GENERATE) == url and _history(url) == history  # nothing to do
    remote, here = CubeDataset(url, ["lulc"], normalize=False), CubeDataset(local, ["lulc"], normalize=False)
    for i in (0, 20):
        assert torch.equal(remote[i]["lulc"], here[i]["lulc"])


def test_embed_fusion_and_backbone_to_s3_equal_local(s3_env, fusion, demo_cube, tmp_path, capsys) -> None:
    local, url = tmp_path / "emb.zarr", _url("emb.zarr")
    embed_cube(fusion, demo_cube, local, progress=False)
    assert main(["embed", "--fusion", str(fusion), "--cube", str(demo_cube), "--out", url, "--quiet"]) == 0
    said = capsys.readouterr()
    assert url in said.out and said.err == ""
    _same(url, local)
    backbone = tmp_path / "tm-tiny"
    tiny().save_pretrained(backbone)
    local_bb, url_bb = tmp_path / "bb.zarr", _url("bb.zarr")
    embed_cube_with_backbone(backbone, demo_cube, local_bb, progress=False)
    assert embed_cube_with_backbone(backbone, demo_cube, url_bb, progress=False) == url_bb
    _same(url_bb, local_bb)
    before = _history(url_bb)
    with pytest.raises(ConfigError, match="written by another run"):
        embed_cube(fusion, demo_cube, url_bb, progress=False)  # another run's store: refused, left as it was
    assert _history(url_bb) == before
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="applied/")
            for o in page.get("Contents", [])]
    leaks = [k for k in keys if SECRET.encode() in s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()]
    assert keys and not leaks, f"the secret is in {leaks[:3]}"
    assert SECRET not in said.out + said.err
