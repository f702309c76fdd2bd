"""k400ft.extract: the miniature archive's parts extracted safely into split folders, the
replacement over train, the files counted against the annotation CSVs; hostile parts and a
full disk refused."""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
from pathlib import Path
from unittest import mock

import kinetics as script
import pytest
from conftest import MINI_KINETICS

from k400ft import demo, extract
from k400ft.io import EXIT_IOERR, OutputError

ARCHIVE = MINI_KINETICS["archive"]


def extract_split(mini_archive: Path, split: str, folder: Path, out: Path) -> list[Path]:
    """Every part of `split` extracted into `folder`; their manifests."""
    manifests = []
    for number in range(ARCHIVE["parts"][split]):
        manifest = out / f"{split}_{number}.json"
        extract.extract_part(mini_archive / split / f"part_{number}.tar.gz", folder, manifest)
        manifests.append(manifest)
    return manifests


def test_parts_are_extracted_checked_and_listed(mini_archive, tmp_path):
    folder = tmp_path / "train"
    manifests = extract_split(mini_archive, "train", folder, tmp_path)
    members = {}
    for number in range(ARCHIVE["parts"]["train"]):
        with tarfile.open(mini_archive / f"train/part_{number}.tar.gz") as tar:
            for member in tar.getmembers():
                members[member.name] = (tar.extractfile(member).read(), member.mtime)
    assert sorted(p.name for p in folder.iterdir()) == sorted(members)  # no temp files
    for name, (data, mtime) in members.items():
        assert (folder / name).read_bytes() == data and (folder / name).stat().st_mtime == mtime
    listed = [f for m in manifests for f in json.loads(m.read_text())["files"]]
    assert sorted(listed) == sorted([name, len(data)] for name, (data, _) in members.items())


def test_the_replacement_goes_over_train_by_file_name(mini_archive, tmp_path):
    folder = tmp_path / "train"
    extract_split(mini_archive, "train", folder, tmp_path)
    with tarfile.open(mini_archive / ARCHIVE["replacement"]) as tar:
        [member] = tar.getmembers()
        whole = tar.extractfile(member).read()
    name = Path(member.name).name
    assert member.name == f"{demo.REPLACEMENT_FOLDER}/{name}"
    assert (folder / name).read_bytes() != whole  # the part's copy is the corrupt one
    record = extract.extract_part(
        mini_archive / ARCHIVE["replacement"], folder, tmp_path / "r.json", flatten=True
    )
    assert (folder / name).read_bytes() == whole and record["files"] == [[name, len(whole)]]
    assert not (folder / demo.REPLACEMENT_FOLDER).exists()


def test_the_count_says_present_missing_and_unexpected(mini_archive, tmp_path):
    for split in ("train", "val"):
        extract_split(mini_archive, split, tmp_path / split, tmp_path)
    (tmp_path / "val" / "zzzzzzzzzzz_000000_000010.mp4").write_bytes(b"stray")
    counts = {
        split: extract.count_split(
            split,
            mini_archive / ARCHIVE["annotations"][split],
            tmp_path / split,
            ["mp4"],
            sorted(tmp_path.glob(f"{split}_*.json")),
            tmp_path / f"count_{split}.json",
        )
        for split in ("train", "val")
    }
    clips = demo.plan_clips(__import__("conftest").MINI_DEMO)
    missing = {c.filename[:-4] for c in clips if c.defect == "missing"}
    for split, count in counts.items():
        listed = [c for c in clips if c.split == split]
        assert count["listed"] == len(listed) and count["parts"] == ARCHIVE["parts"][split]
        assert set(count["missing_videos"]) == {c.filename[:-4] for c in listed} & missing
        assert count["present"] + count["missing"] == count["listed"]
        assert sorted(count["videos"]) == sorted(
            c.filename for c in listed if c.filename[:-4] not in missing
        )
    assert counts["val"]["unexpected_videos"] == ["zzzzzzzzzzz_000000_000010"]
    assert counts["train"]["unexpected"] == 0
    assert json.loads((tmp_path / "count_val.json").read_text()) == counts["val"]


def hostile(path: Path, kind: str) -> Path:
    """A tar.gz with one good video and a hostile member of `kind`."""
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("aaaaaaaaaaa_000001_000011.mp4")
        good.size = 5
        tar.addfile(good, io.BytesIO(b"video"))
        member = tarfile.TarInfo({"dotdot": "../escaped.mp4"}.get(kind, "bbbbbbbbbbb.mp4"))
        if kind == "dotdot":
            member.size = 4
            tar.addfile(member, io.BytesIO(b"evil"))
            return path
        if kind == "symlink_out":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "link_up":
            member.type, member.linkname = tarfile.SYMTYPE, "../../outside"
        elif kind == "device":
            member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3
        elif kind == "fifo":
            member.type = tarfile.FIFOTYPE
        tar.addfile(member)
    return path


@pytest.mark.parametrize("kind", ["dotdot", "symlink_out", "link_up", "device", "fifo"])
def test_a_hostile_part_is_refused_whole_before_anything_is_written(tmp_path, capsys, kind):
    part = hostile(tmp_path / "part_0.tar.gz", kind)
    folder = tmp_path / "k400" / "train"
    manifest = tmp_path / "manifest.json"
    with pytest.raises(extract.ExtractError, match=r"part_0\.tar\.gz: member .* refused"):
        extract.extract_part(part, folder, manifest)
    args = ["extract", "--part", str(part), "--folder", str(folder), "--manifest", str(manifest)]
    assert script.main(args) == 2
    assert "nothing of this part was extracted" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == []  # not even the good video
    assert not manifest.exists() and not (tmp_path / "k400" / "escaped.mp4").exists()


def test_a_full_disk_during_extraction_names_the_file_and_counts_nothing(
    mini_archive, tmp_path, capsys
):
    class FullFile(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    part = mini_archive / "train/part_0.tar.gz"
    folder, manifest = tmp_path / "train", tmp_path / "m.json"
    with mock.patch("os.fdopen", lambda fd, mode: FullFile(fd, "wb")):
        with pytest.raises(OutputError) as raised:
            extract.extract_part(part, folder, manifest)
        args = ["extract", "--part", str(part), "--folder", str(folder)]
        assert script.main([*args, "--manifest", str(manifest)]) == EXIT_IOERR
    assert raised.value.errno == errno.ENOSPC
    assert Path(raised.value.filename).parent == folder
    assert f"error: cannot write {folder}/" in capsys.readouterr().err
    assert not manifest.exists()
    assert [p for p in folder.iterdir()] == []  # no partial or temp file
