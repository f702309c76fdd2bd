"""What produced a result: hashes, code version, packages and host (standard library only).

Recorded by the evaluation stage in metrics.json and by the report stage in provenance.json;
the report's environment has no torch, so nothing here imports it.
"""

from __future__ import annotations

import hashlib
import json
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def json_sha256(value: object) -> str:
    """sha256 of the canonical JSON of `value` (sorted keys, like the rules' as_json)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed version of each distribution (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def host(packages: tuple[str, ...]) -> dict:
    """This machine, its Python and the versions of `packages`."""
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(packages),
    }


def git_state(repo: Path = REPO) -> dict:
    """Commit of the code at `repo` and whether tracked files differ from it."""
    try:
        commit, dirty = (
            subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
            ).stdout.strip()
            for args in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"])
        )
    except (OSError, subprocess.CalledProcessError) as err:
        return {"commit": None, "error": str(err).strip()}
    return {"commit": commit, "dirty": bool(dirty)}
