"""A build to object storage never writes over what is not ours: a prefix holding other objects (someone's files,
a plain Zarr copy, a repository that lost its branches) is refused in one line that says what is there, before anything
is written. What a killed build of ours leaves before its first commit (even between icechunk's two writes that create
the repository) is resumed by its rerun."""

from __future__ import annotations

import icechunk
import numpy as np
import pytest
import xarray as xr

from eo_dataset import CubeError, build
from eo_dataset.cube import storage
from eo_dataset.cube.manifest import done_blocks
from eo_dataset.cube.storage import FIRST_SNAPSHOT, IcechunkWriter, is_repository, objects_under, versions


def _keys(s3, url: str) -> dict[str, bytes]:
    prefix = url.removeprefix("s3://eo-cubes/") + "/"
    found = s3.list_objects_v2(Bucket="eo-cubes", Prefix=prefix).get("Contents", [])
    return {o["Key"]: s3.get_object(Bucket="eo-cubes", Key=o["Key"])["Body"].read() for o in found}


@pytest.fixture
def s3(s3_env):
    import boto3  # with moto, which the s3_env fixture needs

    return boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_prefix_with_someone_elses_objects_is_refused_untouched(s3, s3_url, demo_recipe, demo_samples,
                                                                  overwrite) -> None:
    key = s3_url.removeprefix("s3://eo-cubes/") + "/notes/field-notes.txt"
    s3.put_object(Bucket="eo-cubes", Key=key, Body=b"not a cube")
    before = _keys(s3, s3_url)
    with pytest.raises(CubeError) as err:
        build(demo_recipe, demo_samples[:8], s3_url, scheduler="sync", overwrite=overwrite)
    msg = str(err.value)
    assert "\n" not in msg and s3_url in msg and "notes/field-notes.txt" in msg and "nothing was written" in msg
    assert not any(w in msg.lower() for w in ("delete", "remove", "--overwrite", "rm "))
    assert _keys(s3, s3_url) == before == {key: b"not a cube"}  # intact, and nothing added
    assert not is_repository(s3_url)


def test_a_plain_zarr_store_is_named_and_refused(s3, s3_url, demo_recipe, demo_samples) -> None:
    prefix = s3_url.removeprefix("s3://eo-cubes/")
    s3.put_object(Bucket="eo-cubes", Key=f"{prefix}/zarr.json", Body=b'{"zarr_format": 3, "node_type": "group"}')
    with pytest.raises(CubeError, match=r"already holds a plain Zarr store \(zarr\.json\), not an icechunk "):
        IcechunkWriter.open(s3_url, demo_recipe, demo_samples[:8])
    assert list(_keys(s3, s3_url)) == [f"{prefix}/zarr.json"]


def test_a_sibling_prefix_is_not_ours_to_judge(s3, s3_url, demo_recipe, demo_samples) -> None:
    """``cube.zarr.bak/...`` next to ``cube.zarr`` is not under it: the build goes ahead and leaves it alone."""
    sibling = s3_url.removeprefix("s3://eo-cubes/") + ".bak/x.bin"
    s3.put_object(Bucket="eo-cubes", Key=sibling, Body=b"x")
    assert objects_under(s3_url) == []
    IcechunkWriter.open(s3_url, demo_recipe, demo_samples[:8])
    assert is_repository(s3_url)
    assert s3.get_object(Bucket="eo-cubes", Key=sibling)["Body"].read() == b"x"


def test_a_repository_without_main_that_is_more_than_a_cut_short_creation_is_named_and_kept(
        s3, s3_url, demo_recipe, demo_samples) -> None:
    """Snapshots of a repository that had begun a build, its refs gone: not what a kill leaves, so not ours to
    resume; the build says what is there and keeps it."""
    IcechunkWriter.open(s3_url, demo_recipe, demo_samples[:8])
    prefix = s3_url.removeprefix("s3://eo-cubes/")
    for key in _keys(s3, s3_url):
        if not key.startswith(f"{prefix}/snapshots/"):
            s3.delete_object(Bucket="eo-cubes", Key=key)
    before = _keys(s3, s3_url)
    assert len(before) == 2 and not is_repository(s3_url)  # the first snapshot and the build's beginning
    assert [p for p, _ in objects_under(s3_url)] == [k.removeprefix(prefix + "/") for k in sorted(before)]
    with pytest.raises(CubeError, match=r"already holds an incomplete icechunk repository \(no branch main") as err:
        build(demo_recipe, demo_samples[:8], s3_url, scheduler="sync")
    assert "\n" not in str(err.value) and "delete" not in str(err.value).lower()
    assert _keys(s3, s3_url) == before and versions(s3_url) == []


def _cut_short(s3, url: str, after: str) -> None:
    """The prefix as a build killed at a given point of its start leaves it: ``"first write"`` between icechunk's two
    writes of ``Repository.create`` (its first snapshot, then branch main), ``"create"`` once the repository is
    there, ``"branch"`` once the build branch is there too (its first commit not made yet in either)."""
    repo = icechunk.Repository.create(storage.object_storage(url))
    if after == "first write":
        s3.delete_object(Bucket="eo-cubes", Key=url.removeprefix("s3://eo-cubes/") + f"/{storage.MAIN_REF}")
    elif after == "branch":
        repo.create_branch(storage.BUILD_BRANCH, repo.lookup_branch("main"))


def test_a_build_killed_between_icechunks_first_two_writes_resumes(s3, s3_url, demo_recipe, demo_samples,
                                                                    demo_cube) -> None:
    """Killed between icechunk's first two writes (the repository's first snapshot, not yet its branch main): the
    rerun of the same build finishes the creation and the build, with the same arrays as a local build."""
    _cut_short(s3, s3_url, "first write")
    prefix = s3_url.removeprefix("s3://eo-cubes/")
    assert list(_keys(s3, s3_url)) == [f"{prefix}/snapshots/{FIRST_SNAPSHOT}"] and not is_repository(s3_url)
    with pytest.raises(CubeError, match="holds no cube"):  # a reader meanwhile: no cube, and nothing written
        storage.open_version(s3_url)
    assert list(_keys(s3, s3_url)) == [f"{prefix}/snapshots/{FIRST_SNAPSHOT}"]
    report = build(demo_recipe, demo_samples[:8], s3_url, scheduler="sync")
    assert report.n_blocks == 1 and report.skipped_blocks == 0
    assert len(versions(s3_url)) == 1 and done_blocks(storage.open_version(s3_url)) == {0}
    got, want = storage.open_cube_at(s3_url), xr.open_zarr(demo_cube).isel(sample=slice(0, 8))
    for name in ("s2l2a", "s2l2a_valid", "lulc", "sample_id"):
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
    history = [s.id for s in storage.open_repo(s3_url).ancestry(branch="main")]
    assert history[-1] == FIRST_SNAPSHOT  # the same repository, grown


@pytest.mark.parametrize("after", ["create", "branch"])
def test_a_build_killed_before_its_first_commit_resumes(s3, s3_url, demo_recipe, demo_samples, after) -> None:
    """Killed once the repository (and maybe the build branch) was made, before the build's first commit: the rerun
    makes that commit on the same repository (the blocks follow as in any resumed build)."""
    _cut_short(s3, s3_url, after)
    writer, samples = IcechunkWriter.open(s3_url, demo_recipe, demo_samples[:8])
    assert len(samples) == 8 and writer.done() == set() and versions(s3_url) == []
    repo = storage.open_repo(s3_url)
    assert [s.message for s in repo.ancestry(branch=storage.BUILD_BRANCH)][0] == "eo-dataset: begin"
    assert [s.id for s in repo.ancestry(branch=storage.BUILD_BRANCH)][-1] == FIRST_SNAPSHOT


def test_an_object_named_like_the_first_snapshot_that_is_not_icechunks_is_refused_and_kept(s3, s3_url, demo_recipe,
                                                                         demo_samples) -> None:
    key = s3_url.removeprefix("s3://eo-cubes/") + f"/snapshots/{FIRST_SNAPSHOT}"
    s3.put_object(Bucket="eo-cubes", Key=key, Body=b"not a snapshot")
    refused = r"already holds an incomplete icechunk repository \(no branch main\), not what a build cut short leaves"
    with pytest.raises(CubeError, match=refused) as err:
        build(demo_recipe, demo_samples[:8], s3_url, scheduler="sync")
    assert "\n" not in str(err.value)
    assert _keys(s3, s3_url) == {key: b"not a snapshot"} and not is_repository(s3_url)  # kept, nothing added
