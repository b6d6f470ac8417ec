"""A build to object storage never writes over what is not ours: a prefix holding other objects (someone's files,
a plain Zarr copy, the remains of a repository whose creation was cut short) is refused in one line that says what is
there, before anything is written."""

from __future__ import annotations

import pytest

from eo_dataset import CubeError, build
from eo_dataset.cube.storage import IcechunkWriter, is_repository, objects_under, versions


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


def test_the_remains_of_a_cut_short_creation_are_named_and_kept(s3, s3_url, demo_recipe, demo_samples) -> None:
    """Killed after icechunk wrote the first snapshot, before the branch: icechunk cannot create a repository there
    again; the build says what is there and keeps it."""
    IcechunkWriter.open(s3_url, demo_recipe, demo_samples[:8])
    prefix = s3_url.removeprefix("s3://eo-cubes/")
    for key in _keys(s3, s3_url):
        if not key.startswith(f"{prefix}/snapshots/"):
            s3.delete_object(Bucket="eo-cubes", Key=key)  # what a kill between icechunk's first two writes leaves
    before = _keys(s3, s3_url)
    assert not is_repository(s3_url) and [p for p, _ in objects_under(s3_url)] == [
        k.removeprefix(prefix + "/") for k in sorted(before)]
    with pytest.raises(CubeError, match=r"already holds an incomplete icechunk repository \(no branch main") as err:
        build(demo_recipe, demo_samples[:8], s3_url, scheduler="sync")
    assert "\n" not in str(err.value) and "delete" not in str(err.value).lower()
    assert _keys(s3, s3_url) == before and versions(s3_url) == []
