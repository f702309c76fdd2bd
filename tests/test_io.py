"""The atomic output writer every stage uses."""

import errno
import os
import stat

import pytest

from k400ft.io import atomic_write, check_writable, load_json_arg


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_write(target, "w") as handle:
        handle.write("first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError), atomic_write(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "first"
    assert os.listdir(target.parent) == ["out.txt"]  # no temp file left behind


def test_atomic_write_gives_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "out.bin") as handle:
            handle.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == 0o644


def test_check_writable_tries_the_folder_and_leaves_nothing(tmp_path, monkeypatch):
    check_writable(tmp_path / "new" / "folder")  # made, parents too
    assert list((tmp_path / "new" / "folder").iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        check_writable(tmp_path / "file")
    with pytest.raises(NotADirectoryError):
        check_writable(tmp_path / "file" / "sub")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device"):
        check_writable(tmp_path / "new")
    assert list((tmp_path / "new").iterdir()) == [tmp_path / "new" / "folder"]


def test_load_json_arg_names_the_argument():
    assert load_json_arg('{"a": 1}', "--spec") == {"a": 1}
    with pytest.raises(SystemExit, match="--spec is not valid JSON"):
        load_json_arg("{a: 1}", "--spec")
    with pytest.raises(SystemExit, match="--spec must be a JSON object"):
        load_json_arg("[1]", "--spec")


def test_loader_workers_share_the_jobs_cpus_among_the_nodes_processes(monkeypatch):
    from k400ft.distributed import loader_workers

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loader_workers(44) == 10  # the paper's 4 trainers x (10 workers + 1)
    assert loader_workers(3) == 0  # fewer CPUs than processes: load in the trainer
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert loader_workers(2) == 1  # the demo: one process, one worker
