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


def test_atomic_nibabel_writer_keeps_the_requested_dtype(tmp_path):
    import nibabel as nib
    import numpy as np
    import torch
    from monai.transforms import SaveImage

    from monai_tgd.io import AtomicNibabelWriter

    for dtype in (np.uint8, np.float64):
        save = SaveImage(output_dir=tmp_path, output_postfix=np.dtype(dtype).name, output_dtype=dtype,
                         writer=AtomicNibabelWriter, separate_folder=False, print_log=False)  # fmt: skip
        save(torch.arange(24, dtype=torch.float32).reshape(1, 2, 3, 4), meta_data={"filename_or_obj": "img.nii.gz"})
        assert nib.load(tmp_path / f"img_{np.dtype(dtype).name}.nii.gz").get_data_dtype() == dtype


def test_folder_lock_is_exclusive_across_processes(tmp_path):
    """A second process finds the folder busy (on_busy runs; raising there gives up) until the first releases it."""
    import subprocess
    import sys

    from monai_tgd.io import folder_lock

    probe = (
        "import sys\nfrom monai_tgd.io import folder_lock\n"
        "def busy():\n    print('busy'); sys.exit(3)\n"
        f"with folder_lock({str(tmp_path)!r}, on_busy=busy):\n    print('got it')\n"
    )
    with folder_lock(tmp_path):
        held = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    free = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert (held.returncode, held.stdout.strip()) == (3, "busy")
    assert (free.returncode, free.stdout.strip()) == (0, "got it")
