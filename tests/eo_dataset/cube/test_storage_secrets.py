"""Credentials never leave the environment: not in the cube (any object of the bucket), its manifest, the log file,
or what the commands print (this module runs after the other storage tests, over all they wrote in the bucket)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3

from eo_dataset import build
from tests.eo_dataset.cube.conftest import SECRET


def test_the_secret_is_written_nowhere(s3_env, s3_url, demo_recipe, demo_samples) -> None:
    build(demo_recipe, demo_samples[:8], s3_url, scheduler="sync")  # at least this cube, when run alone
    printed = subprocess.run([sys.executable, "-m", "eo_dataset.cli", "--verbose", "info", s3_url],
                             capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    bad = subprocess.run([sys.executable, "-m", "eo_dataset.cli", "info", s3_url, "--at", "NOSUCHVERSION"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    objects = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="eo-cubes")
               for o in page.get("Contents", [])]
    assert any(k.endswith("/manifests") or "/manifests/" in k for k in objects)  # icechunk wrote its repository
    leaks = [k for k in objects if SECRET.encode() in s3.get_object(Bucket="eo-cubes", Key=k)["Body"].read()]
    assert not leaks, f"the secret is in {leaks[:3]}"
    logs = [p for p in Path(os.environ["EO_DATASET_LOG_DIR"]).rglob("*") if p.is_file()]
    assert logs, "no log file was written"
    assert not [p for p in logs if SECRET in p.read_text(errors="replace")]
    for out in (printed.stdout, printed.stderr, bad.stdout, bad.stderr):
        assert SECRET not in out
