"""Cubes on a real S3-protocol server on loopback (moto): build, read back equal to a local build, versions (append,
update, --at), the CLI with only the standard AWS variables, and CubeDataset."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from eo_dataset import CubeError, build
from eo_dataset.cube import storage
from eo_dataset.cube.manifest import done_blocks, read_manifest
from eo_dataset.cube.storage import BUILD_BRANCH, IcechunkWriter, open_cube_at, open_version, versions
from tests.eo_dataset.cube.conftest import arrays


def lulc_changed(recipe):
    """The recipe with land cover at 30 m: a change of one modality, for an update."""
    lulc = recipe.modalities["lulc"].model_copy(update={"resolution_m": 30.0, "resampling": "mode"})
    return recipe.model_copy(update={"modalities": {**recipe.modalities, "lulc": lulc}})


@pytest.fixture(scope="module")
def s3_cube(s3_env, demo_recipe, demo_samples) -> str:
    """The whole demo world built in-process to the loopback S3 server."""
    url = "s3://eo-cubes/module/demo.zarr"
    report = build(demo_recipe, demo_samples, url, scheduler="sync")
    assert report.path == url and report.n_blocks == 4
    return url


def test_build_to_s3_equals_a_local_build(s3_cube, demo_cube) -> None:
    store = open_version(s3_cube)
    assert done_blocks(store) == {0, 1, 2, 3}
    got, want = arrays(store), arrays(demo_cube)
    assert sorted(got) == sorted(want)
    different = [k for k in want if got[k] != want[k]]
    assert not different, f"arrays differ from the local build: {different}"
    s3, local = open_cube_at(s3_cube), xr.open_zarr(demo_cube)
    assert s3.attrs == local.attrs  # recipe, modalities, merged statistics
    assert [v.message for v in versions(s3_cube)] == [f"eo-dataset: finished 32 samples, recipe {s3.recipe_hash}"]


def test_rerun_of_a_finished_build_writes_nothing(s3_cube, demo_recipe, demo_samples) -> None:
    before = versions(s3_cube)
    report = build(demo_recipe, demo_samples, s3_cube, scheduler="sync")
    assert report.skipped_blocks == 4 and versions(s3_cube) == before


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eo_dataset.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_cli_info_and_report_with_only_the_aws_variables(s3_cube, s3_env, demo_cube, tmp_path) -> None:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "EO_DATASET_LOG_DIR") if k in os.environ} | s3_env
    info = _run("info", s3_cube, env=env)
    assert info.returncode == 0, info.stderr
    assert f"{s3_cube}: 32 samples, recipe 'demo'" in info.stdout and "version " in info.stdout
    csv_s3, csv_local = tmp_path / "s3.csv", tmp_path / "local.csv"
    assert _run("report", s3_cube, "--csv", str(csv_s3), env=env).returncode == 0
    assert _run("report", str(demo_cube), "--csv", str(csv_local), env=env).returncode == 0
    assert csv_s3.read_text() == csv_local.read_text()
    missing = _run("info", "s3://eo-cubes/nothing-here.zarr", env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "holds no cube" in missing.stderr
    no_http = _run("info", s3_cube, env={k: v for k, v in env.items() if k != "AWS_ALLOW_HTTP"})
    assert no_http.returncode == 2 and "AWS_ALLOW_HTTP" in no_http.stderr


def test_cube_dataset_from_s3_equals_local(s3_cube, demo_cube) -> None:
    torch = pytest.importorskip("torch")
    from eo_dataset.torch import CubeDataset

    remote, local = CubeDataset(s3_cube), CubeDataset(demo_cube)
    assert len(remote) == len(local) == 32
    for i in (0, 9, 31):
        a, b = remote[i], local[i]
        assert a.keys() == b.keys()
        for k, v in b.items():
            if isinstance(v, torch.Tensor):
                torch.testing.assert_close(a[k], v, rtol=0, atol=0, equal_nan=True, msg=f"{i} {k}")
            elif isinstance(v, dict):
                assert a[k].keys() == v.keys()
                for kk, vv in v.items():
                    if isinstance(vv, torch.Tensor):
                        torch.testing.assert_close(a[k][kk], vv, rtol=0, atol=0, equal_nan=True, msg=f"{i} {k} {kk}")
                    else:
                        assert a[k][kk] == vv, (i, k, kk)
            else:
                assert a[k] == v, (i, k)


def test_append_and_update_are_new_versions(s3_url, demo_recipe, demo_samples, demo_cube) -> None:
    build(demo_recipe, demo_samples[:12], s3_url, scheduler="sync")  # blocks 0 (8 samples) and 1 (4, partial)
    first = versions(s3_url)[0].snapshot_id
    report = build(demo_recipe, demo_samples[8:], s3_url, scheduler="sync", append=True)
    assert report.n_samples == 32 and report.skipped_blocks == 1
    second = versions(s3_url)[0].snapshot_id
    assert arrays(open_version(s3_url)) == arrays(demo_cube)  # exactly what one build of all 32 samples writes
    old = open_cube_at(s3_url, at=first)
    assert old.sizes["sample"] == 12 and list(old.sample_id.values) == [s.id for s in demo_samples[:12]]
    changed = lulc_changed(demo_recipe)
    with pytest.raises(CubeError, match=r"--update lulc"):
        build(changed, demo_samples, s3_url, scheduler="sync")
    build(changed, demo_samples, s3_url, scheduler="sync", update=["lulc"])
    assert len(versions(s3_url)) == 3
    new, kept = arrays(open_version(s3_url)), arrays(open_version(s3_url, at=second))
    assert kept == arrays(demo_cube)  # the version before the update is still readable, unchanged
    assert new["lulc"] != kept["lulc"] and new["s2l2a"] == kept["s2l2a"]
    assert open_cube_at(s3_url).lulc.shape[-1] == 88  # 30 m now
    assert read_manifest(open_version(s3_url))["recipe_hash"] == changed.hash
    with pytest.raises(CubeError, match="has no version 'nope'"):
        open_version(s3_url, at="nope")
    assert BUILD_BRANCH  # the build branch is where unfinished work lives; main only holds finished versions
    np.testing.assert_equal(open_cube_at(s3_url, at=first).s2l2a_available.values,
                            xr.open_zarr(demo_cube).s2l2a_available.values[:12])


def test_a_plain_zarr_cube_copied_to_s3_is_read_as_it_is(s3_env, demo_cube) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    for p in sorted(demo_cube.rglob("*")):
        if p.is_file():
            s3.put_object(Bucket="eo-cubes", Key=f"plain/demo.zarr/{p.relative_to(demo_cube).as_posix()}",
                          Body=p.read_bytes())
    url = "s3://eo-cubes/plain/demo.zarr"
    assert versions(url) == []
    assert arrays(open_version(url)) == arrays(demo_cube)
    assert open_cube_at(url).attrs == xr.open_zarr(demo_cube).attrs
    with pytest.raises(CubeError, match="holds no cube"):
        open_version(url, at="ABC")


def test_a_reader_racing_the_repository_creation_is_told_no_cube_yet(s3_url, demo_recipe, demo_samples,
                                                                     monkeypatch) -> None:
    """A reader that looked just before a build created the repository, then found it: 'no finished cube yet',
    never an empty store (seen in CI: a reader counted no blocks in a cube that was being built)."""
    IcechunkWriter.open(s3_url, demo_recipe, demo_samples[:8])  # a build that has begun, not finished
    monkeypatch.setattr(storage, "is_repository", lambda url: False)  # the reader's first look: no repository yet
    with pytest.raises(CubeError, match="no finished cube in branch main yet"):
        open_version(s3_url)
