"""Token stores on a real S3-protocol server on loopback (moto): ``tokenize`` to ``s3://`` gives the same tokens as
a local run, a run cut short publishes nothing and resumes, foreign prefixes are refused and left as they are,
``TokenDataset`` reads the published store, and the credentials are written nowhere."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")
pytest.importorskip("vector_quantize_pytorch")
pytest.importorskip("diffusers")
pytest.importorskip("icechunk")

import boto3  # noqa: E402

from eo_dataset.cube.manifest import done_blocks  # noqa: E402
from eo_dataset.cube.storage import MAIN, open_repo, open_version  # noqa: E402
from eo_dataset.errors import OutputError  # noqa: E402
from eo_models.cli.main import main  # noqa: E402
from eo_models.errors import ConfigError  # noqa: E402
from eo_models.tokens import store as token_store  # noqa: E402
from eo_models.tokens.dataset import TokenDataset  # noqa: E402
from eo_models.tokens.store import tokenize_cube  # noqa: E402
from eo_models.tokens.versioned import WRITE_BRANCH  # noqa: E402
from tests.eo_dataset.cube import conftest as s3_server  # noqa: E402

s3_env, SECRET = s3_server.s3_env, s3_server.SECRET  # the loopback S3 server (a fixture of the eo_dataset tests)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BUCKET = "eo-cubes"


def _url() -> str:
    return f"s3://{BUCKET}/tokens/{uuid.uuid4().hex[:10]}/tokens.zarr"


def _same_as_local(url: str, local: Path) -> None:
    remote, here = xr.open_zarr(open_version(url), consolidated=False), xr.open_zarr(local)
    assert set(remote.variables) == set(here.variables)
    for name in here.variables:
        np.testing.assert_array_equal(remote[name].values, here[name].values, err_msg=name)
    assert remote.attrs == here.attrs and remote.attrs["complete"] is True


def _messages(url: str) -> list[str]:
    return [s.message for s in open_repo(url).ancestry(branch=MAIN)]


def test_tokenize_to_s3_equals_a_local_run(s3_env, demo_cube, sources, clean) -> None:
    url = _url()
    assert tokenize_cube(demo_cube, sources, url, batch_size=8, progress=False) == url
    _same_as_local(url, clean)
    history = _messages(url)
    # one commit to create, one per block and modality (4 blocks of 8 samples, 3 modalities), one to finish
    assert sum(m.startswith("eo-models tokenize: ") and " block " in m for m in history) == 12
    assert history[0].startswith("eo-models: finished tokens of 32 samples")
    assert tokenize_cube(demo_cube, sources, url, batch_size=8, progress=False) == url  # complete: nothing to do
    assert _messages(url) == history
    remote, local = TokenDataset(url), TokenDataset(clean)
    assert len(remote) == len(local) == 32 and remote.modalities == local.modalities
    for i in (0, 13, 31):
        a, b = remote[i], local[i]
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (i, k)


def test_a_run_cut_short_publishes_nothing_and_resumes(s3_env, demo_cube, sources, clean, monkeypatch) -> None:
    url = _url()
    real, calls = token_store.mark_done, []

    def dies_at_the_third_block(where, index, entry, sub="blocks"):  # a kill inside the third block's commit
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(where, index, entry, sub=sub)

    monkeypatch.setattr(token_store, "mark_done", dies_at_the_third_block)
    with pytest.raises(KeyboardInterrupt):
        tokenize_cube(demo_cube, sources, url, batch_size=8, progress=False)
    monkeypatch.undo()
    head = open_repo(url).readonly_session(branch=WRITE_BRANCH).store
    assert done_blocks(head, "tokens/s2l2a") == {0, 1}  # committed; the third block's write was lost whole
    with pytest.raises(ConfigError, match="holds no finished token store"):
        TokenDataset(url)  # main holds nothing: readers never see the unfinished store
    tokenize_cube(demo_cube, sources, url, batch_size=8, progress=False)
    _same_as_local(url, clean)


def test_foreign_prefixes_are_refused_and_left_alone(s3_env, demo_cube, sources) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    url = _url()
    key = url.removeprefix(f"s3://{BUCKET}/") + "/results.csv"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"a,b\n1,2\n")
    with pytest.raises(OutputError, match="results.csv"):
        tokenize_cube(demo_cube, sources, url, progress=False)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=url.removeprefix(f"s3://{BUCKET}/"))["Contents"]
    assert [o["Key"] for o in listed] == [key]
    other = _url()
    repo = open_repo(other, create=True)
    repo.create_branch("eo-dataset-build", repo.lookup_branch(MAIN))  # a cube being built there
    with pytest.raises(OutputError, match="branches of another writer"):
        tokenize_cube(demo_cube, sources, other, progress=False)
    assert set(open_repo(other).list_branches()) == {MAIN, "eo-dataset-build"}
    from eo_models.cube import cube_meta, open_cube
    from eo_models.fusion.aligned import AlignedStore, embedding_variables

    with open_cube(demo_cube) as ds:
        meta = cube_meta(ds, demo_cube)
    emb = _url()
    store = AlignedStore.create_or_resume(emb, demo_cube, kind="embeddings", variables=embedding_variables(4, {}, meta),
                                          identity={}, block=32)
    store.write(0, {"embedding": np.zeros((32, 4), np.float32)})
    store.finish()
    history = _messages(emb)
    with pytest.raises(OutputError, match="is an eo-models embeddings store, not a token store"):
        tokenize_cube(demo_cube, sources, emb, progress=False)
    assert _messages(emb) == history and set(open_repo(emb).list_branches()) == {MAIN, WRITE_BRANCH}
    fresh = _url()
    with pytest.raises(ConfigError, match="not an eo-dataset cube"):
        tokenize_cube(f"{demo_cube}-missing", sources, fresh, progress=False)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=fresh.removeprefix(f"s3://{BUCKET}/"))


def test_an_unreachable_bucket_is_one_line_naming_the_url(s3_env, demo_cube, sources) -> None:
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/tokens.zarr"
    with pytest.raises(OutputError) as err:
        tokenize_cube(demo_cube, sources, url, progress=False)
    message = str(err.value)
    assert message.startswith(f"--out {url}: ") and "check the URL and the AWS_*" in message
    assert "NoSuchBucket: The specified bucket does not exist" in message and "icechunk::" not in message
    assert "\n" not in message and SECRET not in message


def test_cli_tokenize_to_s3_and_no_secret_written(s3_env, demo_cube, sources, clean, capsys) -> None:
    url = _url()
    assert main(["tokenize", "--cube", str(demo_cube), "--tokenizers", *map(str, sources), "--out", url,
                 "--batch-size", "8", "--quiet"]) in (0, None)
    printed = capsys.readouterr()
    assert f"tokens written to {url}" in printed.out
    _same_as_local(url, clean)
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="tokens/")
            for o in page.get("Contents", [])]
    assert keys
    leaks = [k for k in keys if SECRET.encode() in s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()]
    assert not leaks, f"the secret is in {leaks[:3]}"
    assert SECRET not in printed.out + printed.err


def test_train_fusion_reads_tokens_from_s3_as_from_a_local_store(s3_env, demo_cube, sources, clean,
                                                                 tmp_path) -> None:
    pytest.importorskip("lightning")
    from eo_models.fusion.model import FusionModel
    from eo_models.fusion.train import train_fusion

    url = _url()
    tokenize_cube(demo_cube, sources, url, batch_size=8, progress=False)
    (tmp_path / "small.yaml").write_text("name: test\nmodel: {dim: 32, encoder_depth: 1, decoder_depth: 1, heads: 2}\n"
                                         "masking: {input_tokens: 16, target_tokens: 16}\n"
                                         "train: {batch_size: 4, steps: 2, num_workers: 0}\n")
    runs = {name: train_fusion(tmp_path / name, tokens=tokens, config=tmp_path / "small.yaml", progress=False)
            for name, tokens in (("remote", url), ("local", clean))}
    assert runs["remote"].steps == runs["local"].steps == 2
    remote, local = (FusionModel.from_pretrained(r.out).state_dict() for r in runs.values())
    assert remote.keys() == local.keys()
    for k in local:
        assert torch.equal(remote[k], local[k]), k  # the same tokens, in the same order: the same model


def test_a_cube_on_s3_tokenizes_as_the_local_cube(s3_env, demo_cube, sources, clean) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    prefix = f"cubes/{uuid.uuid4().hex[:10]}/demo.zarr"
    for p in Path(demo_cube).rglob("*"):  # the cube copied there as a plain Zarr store, as `aws s3 sync` would
        if p.is_file():
            s3.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(demo_cube).as_posix()}")
    cube, url = f"s3://{BUCKET}/{prefix}", _url()
    tokenize_cube(cube, sources, url, batch_size=8, progress=False)
    remote, here = xr.open_zarr(open_version(url), consolidated=False), xr.open_zarr(clean)
    for name in here.variables:
        np.testing.assert_array_equal(remote[name].values, here[name].values, err_msg=name)
    assert remote.attrs["cube"] == cube and remote.attrs["samples_hash"] == here.attrs["samples_hash"]
