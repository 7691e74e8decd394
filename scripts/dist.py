"""Build the release artifacts into dist/ (`make dist`; release.yml publishes them).

- ``dago-client`` (sdist + wheel): clients/python/pyproject.toml, staged with dago_client/ and
  the generated stubs gen/python/dago/v1 as dago/v1/ (plus py.typed markers);
- ``dago``, the server (sdist + wheel): service/pyproject.toml, staged with service/dago and
  requirements.txt's pins plus ``dago-client==<version>``;
- ``@dago/client`` (``npm pack`` of clients/typescript: its ``files``);
- ``SHA256SUMS`` of all of them.

Each Python distribution is built from a staging folder (build/dist/<name>/) holding exactly
what its sdist needs, so the sdist builds on its own and the wheel pip installs is the one
built from it (``python -m build``). The one version is the root pyproject.toml's: written as
VERSION into both staging folders, and required of clients/typescript/package.json.

    python scripts/dist.py [--out dist] [--stage build/dist]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "python"
STUBS = ROOT / "gen" / "python" / "dago" / "v1"
SERVICE = ROOT / "service"
NPM = ROOT / "clients" / "typescript"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def version() -> str:
    """The root pyproject.toml's version, which package.json must repeat."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        v = str(tomllib.load(f)["project"]["version"])
    npm = json.loads((NPM / "package.json").read_text())["version"]
    if npm != v:
        sys.exit(f"clients/typescript/package.json says {npm}, pyproject.toml {v}: make them equal")
    return v


def stage_client(stage: Path, v: str) -> Path:
    d = stage / "dago-client"
    shutil.copytree(CLIENT / "dago_client", d / "dago_client", ignore=IGNORE)
    shutil.copytree(STUBS, d / "dago" / "v1", ignore=IGNORE)
    (d / "dago" / "v1" / "py.typed").write_text("")  # gen/ is rewritten by `make gen`
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(CLIENT / name, d / name)
    (d / "VERSION").write_text(f"{v}\n")
    return d


def stage_server(stage: Path, v: str) -> Path:
    d = stage / "dago"
    shutil.copytree(SERVICE / "dago", d / "dago", ignore=IGNORE)
    shutil.copy2(SERVICE / "pyproject.toml", d / "pyproject.toml")
    shutil.copy2(ROOT / "README.md", d / "README.md")
    pins = (ROOT / "requirements.txt").read_text()
    (d / "requirements.txt").write_text(
        f"{pins.rstrip()}\n# the stubs and the client\ndago-client=={v}\n"
    )
    (d / "VERSION").write_text(f"{v}\n")
    return d


def build(src: Path, out: Path) -> None:
    """sdist, then the wheel from it; with this interpreter's setuptools (no download)."""
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)])


def pack(out: Path) -> None:
    run(["npm", "pack", "--pack-destination", str(out)], cwd=NPM)


def run(argv: list[str], cwd: Path = ROOT) -> None:
    """Runs quietly; on a failure, prints what the command said and stops."""
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout}{done.stderr}")


def checksums(out: Path) -> None:
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
        for p in sorted(out.iterdir())
        if p.is_file() and p.name != "SHA256SUMS"
    ]
    (out / "SHA256SUMS").write_text("".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    ap.add_argument("--stage", type=Path, default=ROOT / "build" / "dist")
    args = ap.parse_args()
    v = version()
    for d in (args.out, args.stage):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    out = args.out.resolve()
    build(stage_client(args.stage, v), out)
    build(stage_server(args.stage, v), out)
    pack(out)
    checksums(out)
    for p in sorted(out.iterdir()):
        print(f"{p.stat().st_size:>10}  {out / p.name}")


if __name__ == "__main__":
    main()
