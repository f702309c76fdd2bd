"""The checkpoint stage against a local fake Google Drive, with the real gdown.

Each Drive failure mode is served by tests/fakedrive.py through a TLS-terminating proxy
on 127.0.0.1 (no network): the virus-scan confirm page, the quota page, the permission
(sign-in) and 404 pages, a truncated body and no route at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import sys
from pathlib import Path

import download_checkpoint
import pytest
import torch
from fakedrive import FakeDrive
from gdown.download import CHUNK_SIZE

from k400ft import checkpoints, layouts
from k400ft.checkpoints import CheckpointError, CheckpointSpec, DriveOptions
from k400ft.provenance import file_sha256

TINY = {
    "img_size": 32,
    "num_frames": 4,
    "patch_size": 16,
    "embed_dim": 24,
    "depth": 2,
    "num_heads": 2,
}
ENV_VARS = (  # requests reads these; none may steer the tests' traffic
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
)


def checkpoint_bytes(fmt: str, seed: int = 0, embed_dim: int = 24) -> bytes:
    """A tiny checkpoint in the exact upstream layout of `fmt`, as torch.save writes it."""
    arch = dict(TINY, embed_dim=embed_dim, patchify="2d" if fmt == "catmae_pretrain" else "3d")
    buffer = io.BytesIO()
    num_classes = 5 if fmt == "videomae_finetuned" else None
    torch.save(layouts.upstream_state_dict(arch, fmt, num_classes=num_classes, seed=seed), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def catmae() -> bytes:
    return checkpoint_bytes("catmae_pretrain")


@pytest.fixture(scope="module")
def big_catmae() -> bytes:
    """Over 1 MiB: gdown reads 512 KiB chunks, so a body cut in half still delivers one."""
    data = checkpoint_bytes("catmae_pretrain", embed_dim=64)
    assert len(data) > 2 * CHUNK_SIZE
    return data


@pytest.fixture(scope="module")
def videomae() -> bytes:
    return checkpoint_bytes("videomae_pretrain")


@pytest.fixture
def drive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    torch.set_num_threads(1)
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    with FakeDrive(tmp_path / "fake-drive-ca.pem") as fake:
        yield fake


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "results" / "checkpoints"


def options(drive: FakeDrive, tmp_path: Path, retries: int = 0) -> DriveOptions:
    return DriveOptions(
        proxy=drive.proxy_url,
        verify=drive.ca_bundle,
        retries=retries,
        timeout=5.0,
        cookies_file=str(tmp_path / "cookies.txt"),
    )


def gdrive_spec(
    file_id: str, fmt: str = "catmae_pretrain", sha256: str | None = None
) -> CheckpointSpec:
    return CheckpointSpec.from_dict("ckpt", {"gdrive_id": file_id, "sha256": sha256, "format": fmt})


def fetch(
    spec: CheckpointSpec, out: Path, drive: FakeDrive, tmp_path: Path, retries: int = 0
) -> str:
    return checkpoints.fetch_checkpoint(
        spec, out / "ckpt.pth", out / "ckpt.sha256", options(drive, tmp_path, retries)
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(out: Path) -> list[str]:
    """Files in the output folder other than gdown's resumable .part files."""
    return (
        sorted(p.name for p in out.iterdir() if not p.name.endswith(".part"))
        if out.exists()
        else []
    )


def test_small_file_is_downloaded_recorded_then_verified(drive, catmae, out, tmp_path):
    drive.add("1smallFileId000", catmae, "catmae.pth")
    digest = fetch(gdrive_spec("1smallFileId000"), out, drive, tmp_path)
    assert (out / "ckpt.pth").read_bytes() == catmae
    assert digest == file_sha256(out / "ckpt.pth")
    lock = json.loads((out / "ckpt.sha256").read_text())
    assert lock["sha256"] == digest and lock["source"] == "gdrive:1smallFileId000"
    assert [(r.host, r.path) for r in drive.requests] == [
        ("drive.google.com", "/uc"),
        ("drive.usercontent.google.com", "/download"),
    ]
    assert leftovers(out) == ["ckpt.pth", "ckpt.sha256"]
    # a later run (Snakemake removed the output) verifies against the recorded hash
    (out / "ckpt.pth").unlink()
    assert fetch(gdrive_spec("1smallFileId000"), out, drive, tmp_path) == digest


def test_a_downloaded_checkpoint_honours_the_umask(drive, catmae, out, tmp_path):
    """gdown writes its temp file 0600: on a shared cluster disk the group could not read the
    checkpoint. It gets what any new file gets, 0666 less the umask."""
    drive.add("1smallFileId000", catmae, "catmae.pth")
    umask = os.umask(0o002)
    try:
        fetch(gdrive_spec("1smallFileId000"), out, drive, tmp_path)
    finally:
        os.umask(umask)
    assert stat.S_IMODE((out / "ckpt.pth").stat().st_mode) == 0o664
    assert stat.S_IMODE((out / "ckpt.sha256").stat().st_mode) == 0o664


def test_virus_scan_confirm_page_is_followed_by_gdown(drive, catmae, out, tmp_path):
    file = drive.add("1largeFileId000", catmae, "catmae.pth", behaviour="confirm")
    fetch(gdrive_spec("1largeFileId000"), out, drive, tmp_path)
    assert (out / "ckpt.pth").read_bytes() == catmae
    downloads = [r.query for r in drive.requests if r.path == "/download"]
    assert downloads[0] == {"id": "1largeFileId000", "export": "download"}  # got the warning page
    assert downloads[1] == {
        "id": "1largeFileId000",
        "export": "download",
        "confirm": "t",
        "uuid": file.uuid,
    }


def test_pinned_hash_mismatch_names_both_hashes_and_leaves_nothing(drive, catmae, out, tmp_path):
    drive.add("1smallFileId000", catmae, "catmae.pth")
    wrong = "0" * 64
    with pytest.raises(CheckpointError) as err:
        fetch(gdrive_spec("1smallFileId000", sha256=wrong), out, drive, tmp_path)
    message = str(err.value)
    assert wrong in message and sha256(catmae) in message
    assert "gdrive:1smallFileId000" in message and "pinned" in message
    assert leftovers(out) == []


def test_trust_on_first_use_lock_mismatch_is_refused(drive, catmae, out, tmp_path):
    drive.add("1smallFileId000", catmae, "catmae.pth")
    fetch(gdrive_spec("1smallFileId000"), out, drive, tmp_path)
    (out / "ckpt.pth").unlink()
    drive.add(
        "1smallFileId000", checkpoint_bytes("catmae_pretrain", seed=1), "catmae.pth"
    )  # replaced upstream
    lock_before = (out / "ckpt.sha256").read_text()
    with pytest.raises(CheckpointError) as err:
        fetch(gdrive_spec("1smallFileId000"), out, drive, tmp_path)
    assert str(out / "ckpt.sha256") in str(err.value)
    assert sha256(catmae) in str(err.value)
    assert (out / "ckpt.sha256").read_text() == lock_before
    assert leftovers(out) == ["ckpt.sha256"]


def test_quota_page_explains_and_offers_manual_path(drive, catmae, out, tmp_path):
    drive.add("1popularFileId0", catmae, "catmae.pth", behaviour="quota")
    with pytest.raises(CheckpointError) as err:
        fetch(gdrive_spec("1popularFileId0"), out, drive, tmp_path)
    message = str(err.value)
    assert "quota" in message and "Too many users" in message and "cookies" in message
    assert f"path: {out / 'manual' / 'ckpt.pth'}" in message
    assert leftovers(out) == []


@pytest.mark.parametrize("file_id", ["1privateFileId0", "1doesNotExist00"])
def test_permission_and_missing_file_pages(drive, catmae, out, tmp_path, file_id):
    drive.add("1privateFileId0", catmae, "catmae.pth", behaviour="private")
    with pytest.raises(CheckpointError) as err:
        fetch(gdrive_spec(file_id), out, drive, tmp_path)
    assert "Anyone with the link" in str(err.value) and file_id in str(err.value)
    hosts = {r.host for r in drive.requests}
    assert ("accounts.google.com" in hosts) == (file_id == "1privateFileId0")
    assert leftovers(out) == []


def test_truncated_body_fails_then_the_next_run_resumes(drive, big_catmae, out, tmp_path):
    file = drive.add("1cutFileId00000", big_catmae, "catmae.pth", behaviour="truncated")
    with pytest.raises(CheckpointError) as err:
        fetch(gdrive_spec("1cutFileId00000"), out, drive, tmp_path)
    assert "ending early" in str(err.value) and "incomplete" in str(err.value)
    assert leftovers(out) == []
    (part,) = out.glob("*.part")  # gdown keeps what arrived, for resume
    # what to do in this workflow, not gdown's command-line flag
    assert "--continue" not in str(err.value)
    assert f"The bytes received are kept in {part}: run the same snakemake command again" in (
        str(err.value)
    )
    received = part.stat().st_size
    assert 0 < received < len(big_catmae)
    file.behaviour = "direct"
    digest = fetch(gdrive_spec("1cutFileId00000"), out, drive, tmp_path)
    assert (out / "ckpt.pth").read_bytes() == big_catmae
    assert digest == sha256(big_catmae)  # gdown's hasher read the kept part back
    assert drive.requests[-1].range == f"bytes={received}-"
    assert list(out.glob("*.part")) == []


def test_truncated_body_is_resumed_within_a_run_by_gdown_retries(drive, big_catmae, out, tmp_path):
    drive.add("1flakyFileId000", big_catmae, "catmae.pth", behaviour="flaky")
    digest = fetch(gdrive_spec("1flakyFileId000"), out, drive, tmp_path, retries=1)
    assert (out / "ckpt.pth").read_bytes() == big_catmae
    assert digest == sha256(big_catmae)  # gdown's hasher saw both parts
    assert drive.requests[-1].range.startswith("bytes=") and drive.requests[-1].range != "bytes=0-"


def test_no_route_to_drive_says_place_the_file_manually(drive, out, tmp_path):
    drive.offline = True
    with pytest.raises(CheckpointError) as err:
        fetch(gdrive_spec("1anyFileId00000"), out, drive, tmp_path)
    message = str(err.value)
    assert "unreachable" in message and f"path: {out / 'manual' / 'ckpt.pth'}" in message
    assert leftovers(out) == []


def test_wrong_layout_names_the_file_and_keys_and_records_nothing(drive, videomae, out, tmp_path):
    drive.add("1videomaeFileId", videomae, "videomae.pth")
    with pytest.raises(CheckpointError) as err:
        fetch(gdrive_spec("1videomaeFileId", fmt="catmae_pretrain"), out, drive, tmp_path)
    message = str(err.value)
    assert "gdrive:1videomaeFileId" in message and "catmae_pretrain" in message
    assert "patch_embed.proj.weight" in message and "encoder.blocks" in message
    assert leftovers(out) == []  # no output, no lock


def test_html_saved_as_checkpoint_is_rejected(drive, out, tmp_path):
    drive.add("1notACheckpoint", b"<!DOCTYPE html><html>not weights</html>", "x.pth")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        fetch(gdrive_spec("1notACheckpoint"), out, drive, tmp_path)
    assert leftovers(out) == []


def test_local_path_is_verified_and_linked(catmae, videomae, out, tmp_path):
    source = tmp_path / "manual.pth"
    source.write_bytes(catmae)
    spec = CheckpointSpec.from_dict(
        "ckpt", {"path": str(source), "sha256": None, "format": "catmae_pretrain"}
    )
    digest = checkpoints.fetch_checkpoint(spec, out / "ckpt.pth", out / "ckpt.sha256")
    assert (out / "ckpt.pth").read_bytes() == catmae
    assert os.path.samefile(out / "ckpt.pth", source)  # hard link on the same file system
    assert json.loads((out / "ckpt.sha256").read_text())["sha256"] == digest
    (out / "ckpt.pth").unlink()
    source.unlink()
    source.write_bytes(videomae)  # a different file at the same place
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        checkpoints.fetch_checkpoint(spec, out / "ckpt.pth", out / "ckpt.sha256")
    assert leftovers(out) == ["ckpt.sha256"]


def test_local_path_must_not_be_the_output(catmae, out):
    out.mkdir(parents=True)
    (out / "ckpt.pth").write_bytes(catmae)
    spec = CheckpointSpec.from_dict(
        "ckpt", {"path": str(out / "ckpt.pth"), "format": "catmae_pretrain"}
    )
    with pytest.raises(CheckpointError, match="is the output itself"):
        checkpoints.fetch_checkpoint(spec, out / "ckpt.pth", out / "ckpt.sha256")
    assert (out / "ckpt.pth").read_bytes() == catmae


def test_corrupt_lock_file_is_reported(catmae, out, tmp_path):
    source = tmp_path / "manual.pth"
    source.write_bytes(catmae)
    out.mkdir(parents=True)
    (out / "ckpt.sha256").write_text("{half a reco")
    spec = CheckpointSpec.from_dict("ckpt", {"path": str(source), "format": "catmae_pretrain"})
    with pytest.raises(CheckpointError, match=f"lock file {out / 'ckpt.sha256'} is unreadable"):
        checkpoints.fetch_checkpoint(spec, out / "ckpt.pth", out / "ckpt.sha256")
    assert leftovers(out) == ["ckpt.sha256"]


def test_missing_local_path(out, tmp_path):
    spec = CheckpointSpec.from_dict(
        "ckpt", {"path": str(tmp_path / "absent.pth"), "format": "catmae_pretrain"}
    )
    with pytest.raises(CheckpointError, match="absent.pth"):
        checkpoints.fetch_checkpoint(spec, out / "ckpt.pth", out / "ckpt.sha256")


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"format": "catmae_pretrain"}, "exactly one"),
        ({"gdrive_id": "1abcdefghij", "path": "x.pth", "format": "catmae_pretrain"}, "exactly one"),
        ({"gdrive_id": "1abcdefghij", "format": "mae"}, "format"),
        ({"gdrive_id": "1abcdefghij", "format": "catmae_pretrain", "sha256": "abc"}, "sha256"),
    ],
)
def test_spec_validation(entry, problem):
    with pytest.raises(CheckpointError, match=problem):
        CheckpointSpec.from_dict("ckpt", entry)


def test_cli_reaches_drive_through_proxy_env_and_fails_with_exit_1(
    drive, catmae, out, tmp_path, monkeypatch, caplog
):
    """The production path: no proxy/CA arguments, HTTPS_PROXY and REQUESTS_CA_BUNDLE set."""
    drive.add("1largeFileId000", catmae, "catmae.pth", behaviour="confirm")
    drive.add("1popularFileId0", catmae, "catmae.pth", behaviour="quota")
    monkeypatch.setenv("HTTPS_PROXY", drive.proxy_url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", drive.ca_bundle)
    monkeypatch.setattr(
        sys.modules["gdown.download"], "DEFAULT_COOKIES_FILE", str(tmp_path / "cookies.txt")
    )
    monkeypatch.setattr(download_checkpoint, "setup_logging", lambda: logging.getLogger("k400ft"))

    def main(name: str, file_id: str) -> int:
        spec = json.dumps({"gdrive_id": file_id, "sha256": None, "format": "catmae_pretrain"})
        return download_checkpoint.main(
            [
                "--name",
                name,
                "--spec",
                spec,
                "--lock",
                str(out / f"{name}.sha256"),
                "--output",
                str(out / f"{name}.pth"),
            ]
        )

    assert main("large", "1largeFileId000") == 0
    assert (out / "large.pth").read_bytes() == catmae
    caplog.clear()
    assert main("popular", "1popularFileId0") == 1
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "Too many users" in record.getMessage() and record.exc_info is None
    assert not (out / "popular.pth").exists()


def test_cli_rejects_bad_spec_json(out):
    with pytest.raises(SystemExit, match="--spec is not valid JSON"):
        download_checkpoint.main(
            [
                "--name",
                "x",
                "--spec",
                "{nope",
                "--lock",
                str(out / "x.sha256"),
                "--output",
                str(out / "x.pth"),
            ]
        )
