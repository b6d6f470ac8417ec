"""A real S3-protocol server on loopback (moto's server mode), started once per test session, and helpers to
compare cubes on it with local ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.servers import free_port, require_emulator, wait_port

SECRET = "eo-dataset-test-secret-Zq7Xv9"  # what the test greps for in everything written


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start ``moto_server`` on 127.0.0.1, create a bucket, set the standard AWS variables for this process and its
    children (and nothing else), and stop the server at the end of the session."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(exe).exists():
        require_emulator("moto_server", "not installed: pip install 'moto[server]' (the test extra)")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "eo-test-key",
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    try:
        try:
            wait_port(port, proc, 30, log)
        except RuntimeError as exc:
            require_emulator("moto_server", str(exc))
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="eo-cubes")
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in locals().get("saved", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_url(s3_env: dict[str, str]) -> str:
    """A fresh cube URL in the session's bucket."""
    return f"s3://eo-cubes/test/{uuid.uuid4().hex[:10]}/cube.zarr"


def arrays(where) -> dict[str, tuple[str, bytes]]:
    """Every array of a cube (not the build manifest) as (dtype, bytes): the data, compared byte for byte."""
    root = zarr.open_group(where, mode="r", zarr_format=3, use_consolidated=False)
    out = {}
    for name, arr in root.arrays():
        data = np.asarray(arr[...])
        text = data.dtype.kind in "OTU"  # strings: compared as text (their buffers hold pointers)
        out[name] = (str(data.dtype), "\x00".join(map(str, data.ravel())).encode() if text else data.tobytes())
    return out
