"""Atomic writes: a crash never leaves half a file."""
import pytest


def test_atomic_write_leaves_whole_files_with_normal_permissions(tmp_path):
    import os

    from dtr_plugins.core.io import atomic_path, write_text

    path = write_text(tmp_path / "a.txt", "hello")
    assert path.read_text() == "hello" and (os.stat(path).st_mode & 0o777) == 0o666 & ~_umask()
    def crash_while_writing():
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        crash_while_writing()
    assert list(tmp_path.iterdir()) == [path]  # no half file, no temp file


def _umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
