import os
import stat

import pytest

from monai_tgd.io import atomic_path


def test_complete_file_with_the_usual_mode(tmp_path):
    target = tmp_path / "sub" / "out.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.name.endswith("-out.nii.gz") and tmp.parent == target.parent
        tmp.write_bytes(b"data")
        assert not target.exists()  # nothing under the final name until the block succeeds
    assert target.read_bytes() == b"data"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert list(target.parent.iterdir()) == [target]


def test_failure_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
