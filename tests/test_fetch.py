"""k400ft.fetch: the archive's parts fetched from a real HTTP server on 127.0.0.1 serving the
miniature archive (tests/fakearchive.py), with each fault a download meets."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import kinetics as script
import pytest
import requests
from fakearchive import FakeArchive

from k400ft import fetch
from k400ft.demo import tar_gz
from k400ft.io import EXIT_IOERR, OutputError

ROOT = Path(__file__).resolve().parents[1]
PART = "train/part_1.tar.gz"
FAST = {"retries": 3, "backoff": 0.01}


@pytest.fixture
def served(mini_archive):
    with FakeArchive(mini_archive) as archive:
        yield archive


def fetched(served, tmp_path, path=PART, **kwargs):
    """fetch_part of `path` from the fake archive into tmp_path; returns (record, dest)."""
    dest = tmp_path / "archives" / path
    record = fetch.fetch_part(
        f"{served.url}/{path}", dest, tmp_path / "failed.json", **{**FAST, **kwargs}
    )
    return record, dest


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------
def test_a_part_is_fetched_from_beside_its_list_whatever_host_the_list_names():
    line = "https://s3.amazonaws.com/kinetics/400/train/part_17.tar.gz"
    assert fetch.part_url("http://mirror/k400/train/k400_train_path.txt", line) == (
        "http://mirror/k400/train/part_17.tar.gz"
    )
    assert fetch.part_url("file:///data/copy/train/list.txt", line + "\n") == (
        "file:///data/copy/train/part_17.tar.gz"
    )
    with pytest.raises(fetch.ArchiveError, match="does not name a .tar.gz part"):
        fetch.part_url("http://mirror/list.txt", "https://host/readme.md")


def test_relative_file_urls_are_resolved_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fetch.resolve_url("file:copy/k400") == (tmp_path / "copy/k400").as_uri()
    assert (
        fetch.join_url("file:copy", "train/x.txt") == f"{(tmp_path / 'copy').as_uri()}/train/x.txt"
    )
    assert fetch.join_url("https://h/k/400/", "a.csv") == "https://h/k/400/a.csv"


def test_a_list_that_disagrees_with_the_config_names_both(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("# parts\nhttp://h/train/part_0.tar.gz\n\nhttp://h/train/part_1.tar.gz\n")
    urls = fetch.read_list(listing, "http://m/t/list.txt", 2, "kinetics.archive.parts.train")
    assert urls == ["http://m/t/part_0.tar.gz", "http://m/t/part_1.tar.gz"]
    with pytest.raises(fetch.ArchiveError, match=r"names 2 parts, config kinetics.archive.parts"):
        fetch.read_list(listing, "http://m/t/list.txt", 3, "kinetics.archive.parts")
    listing.write_text("http://h/train/part_0.tar.gz\nhttp://h/train/notes.txt\n")
    with pytest.raises(fetch.ArchiveError, match=r"list\.txt:2: "):
        fetch.read_list(listing, "http://m/t/list.txt", 2, "k")


def test_read_tar_gz_reads_a_whole_part_and_refuses_every_kind_of_cut(tmp_path, mini_archive):
    whole = (mini_archive / PART).read_bytes()
    (tmp_path / "ok.tar.gz").write_bytes(whole)
    with tarfile.open(tmp_path / "ok.tar.gz") as tar:
        members = tar.getmembers()
    assert fetch.read_tar_gz(tmp_path / "ok.tar.gz") == {
        "members": len(members),
        "bytes": sum(m.size for m in members),
    }
    raw = gzip.decompress(whole)
    end = raw.index(b"\0" * 1024, members[-1].offset_data + members[-1].size)
    cases = {
        "cut gzip": whole[: len(whole) * 2 // 3],
        "flipped byte": whole[:100] + bytes([whole[100] ^ 1]) + whole[101:],
        "tar cut between members": gzip.compress(raw[: members[-1].offset], mtime=0),
        "tar cut inside a member": gzip.compress(raw[: members[-1].offset_data + 10], mtime=0),
        "no end-of-archive blocks": gzip.compress(raw[:end], mtime=0),
        "not gzip": b"<html>403 Forbidden</html>",
        "empty tar": gzip.compress(b"\0" * 10240, mtime=0),
    }
    for name, data in cases.items():
        (tmp_path / "bad.tar.gz").write_bytes(data)
        with pytest.raises(fetch.ArchiveError, match="not a complete tar.gz"):
            fetch.read_tar_gz(tmp_path / "bad.tar.gz")
            pytest.fail(name)


# --------------------------------------------------------------------------------------------
# The faults, against the HTTP server
# --------------------------------------------------------------------------------------------
def test_a_part_is_fetched_checked_and_renamed(served, tmp_path, mini_archive):
    record, dest = fetched(served, tmp_path)
    assert dest.read_bytes() == (mini_archive / PART).read_bytes()
    assert record["bytes"] == dest.stat().st_size and record["attempts"] == 1
    assert record["check"]["members"] > 0
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no temp files


def test_a_connection_dropped_mid_part_is_resumed_and_the_bytes_equal(
    served, tmp_path, mini_archive
):
    served.fault(PART, "drop_once")
    record, dest = fetched(served, tmp_path)
    assert dest.read_bytes() == (mini_archive / PART).read_bytes()
    first, second = served.gets(PART)
    size = (mini_archive / PART).stat().st_size
    assert first.range is None and second.range == f"bytes={size // 2}-"  # resumed, not redone
    assert record["attempts"] == 2 and record["restarts"] == 0


def test_a_server_that_ignores_range_is_read_again_from_zero(served, tmp_path, mini_archive):
    served.fault(PART, "drop_once", "ignore_range")
    record, dest = fetched(served, tmp_path)
    assert dest.read_bytes() == (mini_archive / PART).read_bytes()
    assert served.gets(PART)[1].range is not None  # asked for the rest, got the whole file
    assert record["restarts"] == 1


def test_a_missing_part_fails_at_once_naming_its_url(served, tmp_path):
    served.fault(PART, "missing")
    with pytest.raises(fetch.FetchError, match=rf"^{re.escape(served.url)}/{PART}: HTTP 404"):
        fetched(served, tmp_path)
    assert len(served.gets(PART)) == 1  # not retried
    failure = json.loads((tmp_path / "failed.json").read_text())
    assert failure["url"] == f"{served.url}/{PART}" and "HTTP 404" in failure["reason"]
    assert not list((tmp_path / "archives").rglob("*.tar.gz"))


def test_corrupted_bytes_are_caught_before_the_part_counts(served, tmp_path, mini_archive):
    served.fault(PART, "corrupt_once")
    record, dest = fetched(served, tmp_path)
    assert dest.read_bytes() == (mini_archive / PART).read_bytes()
    assert record["corrupt"] == 1 and len(served.gets(PART)) == 2


def test_a_part_corrupt_twice_fails_naming_its_url_and_is_never_counted(served, tmp_path):
    served.fault(PART, "corrupt")
    with pytest.raises(fetch.FetchError, match=rf"{re.escape(served.url)}/{PART}: corrupt twice"):
        fetched(served, tmp_path)
    assert not (tmp_path / "archives" / PART).exists()
    assert list((tmp_path / "archives").rglob("*part_1*")) == []  # nor its temp file


def test_a_truncated_tar_is_refused(served, tmp_path, mini_archive):
    """The server's file itself is cut: a gzip of a tar that stops between two members (what
    tarfile reads as complete). Fetched twice, refused twice, never renamed."""
    raw = gzip.decompress((mini_archive / PART).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        last = tar.getmembers()[-1]
    bad = tmp_path / "served"
    shutil.copytree(mini_archive, bad)
    (bad / PART).write_bytes(gzip.compress(raw[: last.offset], mtime=0))
    with FakeArchive(bad) as archive:
        with pytest.raises(fetch.FetchError, match="corrupt twice: .*end-of-archive"):
            fetched(archive, tmp_path)
    assert not (tmp_path / "archives" / PART).exists()


def test_transient_errors_are_retried_then_fail_naming_the_url(served, tmp_path):
    served.fault(PART, "drop_always")  # no byte past the middle ever arrives
    with pytest.raises(fetch.FetchError, match=rf"{re.escape(served.url)}/{PART}: .*retries spent"):
        fetched(served, tmp_path)
    assert len(served.gets(PART)) == 1 + FAST["retries"]


def test_a_full_disk_during_the_fetch_names_the_part_and_counts_nothing(
    served, tmp_path, monkeypatch, capsys
):
    """ENOSPC on a write of the part: one line naming it, exit 74; no part under its name."""

    class FullFile(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_open = open

    def full_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(".part"):
            return FullFile(path, mode.replace("b", "") or "r")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(fetch, "open", full_open, raising=False)
    dest = tmp_path / "archives" / PART
    with pytest.raises(OutputError) as raised:
        fetch.fetch_part(f"{served.url}/{PART}", dest, tmp_path / "failed.json", **FAST)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(dest)
    assert not dest.exists()
    args = ["fetch", "--url", f"{served.url}/{PART}", "--tar", "--output", str(dest)]
    assert script.main([*args, "--failure", str(tmp_path / "f.json")]) == EXIT_IOERR
    assert f"error: cannot write {dest}: [Errno 28] No space left on device" in (
        capsys.readouterr().err
    )
    assert not dest.exists()


def test_a_killed_fetch_is_resumed_and_no_half_part_is_ever_used(tmp_path, mini_archive):
    """kill -9 of the fetch job mid-part (scancel, the OOM killer): the part is not under its
    name, only the temp file; the job run again asks for the rest (Range) and the part equals
    the server's bytes."""
    served_dir = tmp_path / "served"
    shutil.copytree(mini_archive, served_dir)
    payload = os.urandom(2 << 20)  # incompressible: 2 MiB on the wire, 0.05 s per 16 KiB
    (served_dir / PART).write_bytes(tar_gz([("aaaaaaaaaaa_000001_000011.mp4", payload)]))
    dest = tmp_path / "archives" / PART
    temp = fetch.temp_path(dest)
    listing = mini_archive / "train/k400_train_path.txt"
    with FakeArchive(served_dir) as archive:
        archive.fault(PART, "slow")
        args = [
            *("fetch", "--list", str(listing), "--list-url", f"{archive.url}/train/list.txt"),
            *("--index", "1", "--parts", "3", "--tar", "--output", str(dest)),
            *("--failure", str(tmp_path / "failed.json")),
        ]
        command = [sys.executable, str(ROOT / "scripts/kinetics.py"), *args]
        job = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (temp.exists() and temp.stat().st_size > 256 * 1024):
            assert job.poll() is None and time.monotonic() < deadline, "no bytes arrived"
            time.sleep(0.02)
        job.kill()
        job.wait()
        assert not dest.exists()
        kept = temp.stat().st_size
        assert 0 < kept < (served_dir / PART).stat().st_size
        archive.faults.clear()
        rerun = subprocess.run(command, capture_output=True, text=True, check=False)
        assert rerun.returncode == 0, rerun.stderr
        assert archive.gets(PART)[-1].range == f"bytes={kept}-"
    assert dest.read_bytes() == (served_dir / PART).read_bytes()
    assert not temp.exists()


def test_file_urls_are_served_like_a_static_server(tmp_path, mini_archive):
    http = fetch.session()
    url = (mini_archive / PART).as_uri()
    data = (mini_archive / PART).read_bytes()
    assert fetch.remote_size(url, http) == len(data)
    with http.get(url, stream=True) as whole:
        assert whole.status_code == 200 and whole.content == data
        etag = whole.headers["ETag"]
    ranged = http.get(url, headers={"Range": "bytes=10-", "If-Range": etag})
    assert ranged.status_code == 206 and ranged.content == data[10:]
    assert ranged.headers["Content-Range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
    assert http.get(url, headers={"Range": "bytes=10-", "If-Range": '"old"'}).status_code == 200
    assert http.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    assert http.get((tmp_path / "nothing").as_uri()).status_code == 404
    with pytest.raises(fetch.FetchError, match="HTTP 404"):
        fetch.remote_size((tmp_path / "nothing").as_uri(), http)
    record = fetch.fetch_part(url, tmp_path / "p.tar.gz", tmp_path / "f.json")
    assert (tmp_path / "p.tar.gz").read_bytes() == data and record["check"]["members"] > 0


def test_a_connection_refused_is_transient(tmp_path):
    """Nothing listens: retried with backoff, then the URL is named."""
    with FakeArchive(tmp_path) as archive:
        url = f"{archive.url}/x.tar.gz"
    with pytest.raises(fetch.FetchError, match=rf"^{re.escape(url)}: .*retries spent"):
        fetch.fetch(url, tmp_path / "x.tar.gz", retries=1, backoff=0.01)
    assert isinstance(requests.ConnectionError(), OSError)  # why _chunks sorts them out
