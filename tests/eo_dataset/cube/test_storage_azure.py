"""Cubes on Azure Blob Storage (``az://CONTAINER/PATH``), against Azurite (the Azure Storage emulator) on loopback:
a build, ``eo-dataset info`` with only the standard Azure variables, ``CubeDataset`` equal to a local build, a
creation cut short resumed, and the account key written nowhere.

Azurite is an npm package (``.ci/emulators.sh`` installs it); without it these tests skip, under CI they fail.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from eo_dataset import CubeError, build
from eo_dataset.cube import storage
from eo_dataset.cube.manifest import done_blocks
from tests.eo_dataset.cube.conftest import SECRET
from tests.servers import AZURITE_HELP, azurite_blob, create_azure_container, require_emulator, start_azurite

ACCOUNT = "eotestaccount"
KEY = base64.b64encode(f"{SECRET}-azure-account-key".encode()).decode()  # what must never be written
N = 16  # two blocks of the demo recipe


@pytest.fixture(scope="module")
def az_env() -> Iterator[dict[str, str]]:
    """Azurite with one account and a container ``cubes``; the standard Azure variables set for this process and
    its children (and undone at the end)."""
    require_emulator("Azurite (the Azure Storage emulator)", None if azurite_blob() else
                     f"azurite-blob is not installed: {AZURITE_HELP}")
    with start_azurite(ACCOUNT, KEY) as endpoint, pytest.MonkeyPatch.context() as mp:
        create_azure_container(endpoint, ACCOUNT, KEY, "cubes")
        env = {"AZURE_STORAGE_ACCOUNT_NAME": ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": KEY,
               "AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": endpoint}
        for k, v in env.items():
            mp.setenv(k, v)
        yield env


@pytest.fixture(scope="module")
def az_cube(az_env, demo_recipe, demo_samples) -> str:
    url = "az://cubes/module/demo.zarr"
    report = build(demo_recipe, demo_samples[:N], url, scheduler="sync")
    assert report.path == url and report.n_blocks == 2
    return url


def test_build_to_azure_equals_a_local_build(az_cube, demo_cube) -> None:
    assert done_blocks(storage.open_version(az_cube)) == {0, 1}
    got, want = storage.open_cube_at(az_cube), xr.open_zarr(demo_cube).isel(sample=slice(0, N))
    per_sample = [k for k in want.variables if "sample" in want[k].dims]
    assert sorted(per_sample) == sorted(k for k in got.variables if "sample" in got[k].dims)
    for name in per_sample:
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
    assert got.attrs["recipe_hash"] == want.attrs["recipe_hash"]
    assert [v.message for v in storage.versions(az_cube)] == [
        f"eo-dataset: finished {N} samples, recipe {got.recipe_hash}"]


def test_cube_dataset_from_azure_equals_local(az_cube, demo_cube) -> None:
    torch = pytest.importorskip("torch")
    from eo_dataset.torch import CubeDataset

    kw = {"modalities": ["s2l2a", "lulc"], "normalize": False}  # stored values: each cube has its own statistics
    remote, local = CubeDataset(az_cube, **kw), CubeDataset(demo_cube, **kw)
    assert len(remote) == N and remote.at == storage.versions(az_cube)[0].snapshot_id
    for i in (0, 9, N - 1):
        for k in ("s2l2a", "lulc"):
            torch.testing.assert_close(remote[i][k], local[i][k], rtol=0, atol=0, equal_nan=True, msg=f"{i} {k}")


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eo_dataset.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_cli_info_with_only_the_azure_variables_and_the_key_written_nowhere(az_cube, az_env) -> None:
    import obstore
    from obstore.store import from_url

    env = {k: os.environ[k] for k in ("PATH", "HOME", "EO_DATASET_LOG_DIR") if k in os.environ} | az_env
    info = _cli("--verbose", "info", az_cube, env=env)
    assert info.returncode == 0, info.stderr
    assert f"{az_cube}: {N} samples, recipe 'demo'" in info.stdout and "version " in info.stdout
    missing = _cli("info", "az://cubes/nothing-here.zarr", env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "holds no cube" in missing.stderr
    no_account = _cli("info", az_cube, env={k: v for k, v in env.items()
                                            if k not in ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_USE_EMULATOR")})
    assert no_account.returncode == 2 and "AZURE_STORAGE_ACCOUNT_NAME" in no_account.stderr
    # everything in the container (this module's cubes), the log files and what was printed: no key, no secret
    container = from_url("az://cubes/", account_name=ACCOUNT)
    paths = [o["path"] for batch in obstore.list(container) for o in batch]
    assert any("/manifests/" in p for p in paths)  # icechunk wrote its repository
    leaks = [p for p in paths if KEY.encode() in (data := bytes(obstore.get(container, p).bytes()))
             or SECRET.encode() in data]
    assert not leaks, f"the account key is in {leaks[:3]}"
    logs = [p for p in Path(os.environ["EO_DATASET_LOG_DIR"]).rglob("*") if p.is_file()]
    assert logs and not [p for p in logs if KEY in p.read_text(errors="replace")]
    for out in (info.stdout, info.stderr, missing.stdout, missing.stderr, no_account.stdout, no_account.stderr):
        assert KEY not in out and SECRET not in out


def test_a_creation_cut_short_on_azure_resumes(az_env, demo_recipe, demo_samples) -> None:
    """Killed between icechunk's two writes that create the repository (the conditional write that finishes the
    creation is Azure's If-None-Match here)."""
    import icechunk
    import obstore
    from obstore.store import from_url

    url = "az://cubes/cut-short/demo.zarr"
    icechunk.Repository.create(storage.object_storage(url))
    # what the kill leaves: the first snapshot alone
    obstore.delete(from_url(url + "/", account_name=ACCOUNT), storage.MAIN_REF)
    assert not storage.is_repository(url)
    with pytest.raises(CubeError, match="holds no cube"):
        storage.open_version(url)
    writer, samples = storage.IcechunkWriter.open(url, demo_recipe, demo_samples[:8])
    assert len(samples) == 8 and writer.done() == set() and storage.is_repository(url)
    assert [s.id for s in storage.open_repo(url).ancestry(branch=storage.BUILD_BRANCH)][-1] == storage.FIRST_SNAPSHOT
