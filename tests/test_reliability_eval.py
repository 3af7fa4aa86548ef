"""Issue 16, items 1 and 2, for the evaluate and evaluate_ood workflows: every input file is read in full and
validated before the first network runs, errors name the path, the study and the field, and nothing is written
half-way.

* Regression tests: a truncated ``.nii.gz`` (bundle evaluate) or ``.nii``, NaN/inf voxels (bundle evaluate_ood and
  ``evaluate_networks``), a float PET image or an empty map given as ``label``; an interruption mid-run keeps the
  old outputs; the report files are written all or none.
* Property tests: a valid tiny-cohort file, corrupted at random (fixed seeds): truncated at random byte offsets,
  random bytes flipped, NaN/inf at random voxels, ``label`` replaced by a float image. The check
  (:func:`monai_tgd.transforms.validate.load_pet`, behind :func:`check_study_files`) must either raise a
  ``ValueError`` whose message holds the path and the field, or return exactly the volume the file holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from monai_tgd.data import load_datalist
from monai_tgd.evaluation import evaluate_networks, evaluate_ood
from monai_tgd.evaluation.records import check_study_files, load_label, where
from monai_tgd.evaluation.tables import write_texts
from monai_tgd.inferers import Slab25DInferer
from monai_tgd.transforms.validate import LABEL_FORM, ValidateLabel, ValidateLabeld, load_pet

from .conftest import TINY_OVERRIDES

INFERER = Slab25DInferer(slab=3, axis=-1, sw_batch_size=8)
SEED = 16  # the number; every random case below derives its generator from it


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def cohort(tiny_cohort, tmp_path) -> Path:
    """A private copy of the tiny cohort (its datalist); tests corrupt files in it."""
    folder = tmp_path / "cohort"
    shutil.copytree(Path(tiny_cohort).parent, folder)
    return folder / Path(tiny_cohort).name


def cohort_copy(datalist: Path, folder: Path) -> Path:
    """Another pristine copy of a cohort folder (for a second scenario in one test)."""
    shutil.copytree(Path(datalist).parent, folder)
    return folder / Path(datalist).name


def records(datalist, section: str, recon: str | None = "v2") -> list[dict]:
    required = ["reference", "realizations", "label"] if section == "test" else ["reference", "label", "input_120s"]
    return load_datalist(datalist, section, required, recon=recon)


def tiny_checkpoint(path: Path) -> str:
    """A checkpoint of the bundle's network with the test sizes (untrained weights are enough here)."""
    from monai_tgd.networks import DnCNN

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(DnCNN(features=TINY_OVERRIDES["features"], num_layers=TINY_OVERRIDES["num_layers"]).state_dict(), path)
    return str(path)


class Counting(nn.Module):
    """A 'denoiser' returning the centre input slice and counting its calls (``calls[0]``; evaluation runs deep
    copies of its networks, so the copies are this object); on call number ``stop_at`` it raises
    ``KeyboardInterrupt``, like Ctrl-C."""

    def __init__(self, stop_at: int | None = None):
        super().__init__()
        self.calls = [0]
        self.stop_at = stop_at

    def __deepcopy__(self, memo):
        return self

    def forward(self, x):
        self.calls[0] += 1
        if self.stop_at is not None and self.calls[0] >= self.stop_at:
            raise KeyboardInterrupt("stopped mid-run")
        return x[:, 1:2]


def messages(error: BaseException) -> str:
    """The messages of an exception and of its causes (the bundle runner wraps the workflow's error)."""
    chain = []
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(chain)


def set_voxels(path: str, voxels: list[tuple[int, ...]], values: list[float]) -> None:
    """Rewrite the NIfTI ``path`` (same header, same dtype) with ``values`` at ``voxels``."""
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    for v, x in zip(voxels, values, strict=True):
        data[v] = x
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


# ------------------------------------------------------------------------------------------- regression tests


def test_bundle_evaluate_truncated_file_fails_before_any_network_and_writes_nothing(
    run_bundle, cohort, tmp_path, capsys
):
    """Item 1: a ``.nii.gz`` cut short in the *second* study used to pass the header-only check, let every network
    run on the first study and then die with an EOFError naming no file."""
    ckpt = tiny_checkpoint(tmp_path / "models" / "model_v1.pt")
    second = records(cohort, "test")[1]
    target = second["realizations"][3]
    data = Path(target).read_bytes()
    Path(target).write_bytes(data[: len(data) // 2])
    run_dir = tmp_path / "runs" / "evaluate"
    run_dir.mkdir(parents=True)
    (run_dir / "evaluation.csv").write_text("results of an earlier run\n")  # must survive untouched
    capsys.readouterr()

    with pytest.raises(Exception) as error:
        run_bundle("evaluate", datalist=str(cohort), eval_networks={"v1-net": ckpt})
    text = messages(error.value)
    assert f"study {second['study']}, field 'realizations[3]', file {target}: cannot read it" in text
    assert "truncated or corrupted file" in text and "EOFError" in text
    printed = capsys.readouterr().out
    assert "evaluate: test_" not in printed  # no study was evaluated, not even the first one's input row
    assert files_in(run_dir) == {"evaluation.csv": b"results of an earlier run\n"}


def test_bundle_evaluate_ood_non_finite_input_fails_before_any_network(run_bundle, cohort, tmp_path, capsys):
    """Item 2: NaN/inf voxels used to be accepted (exit 0, "n/a" cells, empty CSV cells); now refused with the
    message inference gives, naming the path, the study and the field, before any network runs."""
    ckpt = tiny_checkpoint(tmp_path / "models" / "model_v2.pt")
    last = records(cohort, "ood")[-1]
    set_voxels(last["input_120s"], [(20, 20, 5), (21, 20, 5)], [np.nan, -np.inf])
    capsys.readouterr()

    with pytest.raises(Exception) as error:
        run_bundle("evaluate_ood", datalist=str(cohort), eval_networks={"v2-net": ckpt})
    text = messages(error.value)
    assert (
        f"study {last['study']}, field 'input_120s', file {last['input_120s']}: expected finite voxel values; "
        "found 1 NaN and 1 inf voxel(s) of 19200." in text
    )
    assert "evaluate_ood: ood_" not in capsys.readouterr().out  # no study evaluated
    assert not list((tmp_path / "runs").rglob("evaluation_ood*"))


def test_evaluate_refuses_non_finite_images_and_float_labels_before_inference(cohort, tmp_path):
    """Item 2 for evaluate_networks (the evaluate workflow's code): NaN in one reference, or a float PET image as
    ``label`` (it used to give a 29-voxel liver instead of ~100, with a numpy cast warning), stop the run before
    the first network call and write nothing."""
    pristine = records(cohort_copy(cohort, tmp_path / "pristine"), "test")
    test = records(cohort, "test")
    net, out = Counting(), tmp_path / "out"
    set_voxels(test[1]["reference"], [(3, 4, 5)], [np.inf])
    with pytest.raises(ValueError) as error:
        evaluate_networks({"n": net}, test, INFERER, output_dir=out, log=None)
    text = str(error.value)
    assert f"study {test[1]['study']}, field 'reference', file {test[1]['reference']}: expected finite" in text
    assert "found 0 NaN and 1 inf voxel(s)" in text

    test = pristine
    image = str(tmp_path / "pet_image.nii.gz")  # a float PET image that the datalist gives as the label
    shutil.copyfile(test[1]["realizations"][0], image)
    as_label = [test[0], dict(test[1], label=image)]
    with pytest.raises(ValueError) as error:
        evaluate_networks({"n": net}, as_label, INFERER, output_dir=out, log=None)
    text = str(error.value)
    assert f"study {test[1]['study']}, field 'label', file {image}: expected {LABEL_FORM}; found " in text
    assert "non-integer voxel value(s)" in text
    assert net.calls[0] == 0 and not out.exists()


def test_integer_labels_stored_as_float_are_accepted_and_give_the_same_rows(cohort, tmp_path):
    """The label check does not over-reject: the same label map saved as float32 (whole numbers) evaluates to the
    same rows as the int16 original."""
    test = records(cohort, "test")[:1]
    label = nib.load(test[0]["label"])
    as_float = str(tmp_path / "label_float.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj).astype(np.float32), label.affine), as_float)
    rows = evaluate_networks({"n": Counting()}, test, INFERER, log=None)
    again = evaluate_networks({"n": Counting()}, [dict(test[0], label=as_float)], INFERER, log=None)
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in again] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows
    ]
    assert np.array_equal(load_label(as_float, "s"), np.asarray(label.dataobj).astype(np.int64))


def test_label_map_without_body_is_refused_before_inference(cohort, tmp_path):
    """A label map with no voxel > 0 (no body to measure in) is refused up front, like any other bad input (it used
    to stop the run only when its study was reached, after the earlier studies' inference)."""
    ood = records(cohort, "ood")
    empty = str(tmp_path / "empty_label.nii.gz")
    label = nib.load(ood[-1]["label"])
    nib.save(nib.Nifti1Image(np.zeros(label.shape, np.int16), label.affine), empty)
    net = Counting()
    with pytest.raises(ValueError) as error:
        evaluate_ood({"n": net}, [ood[0], dict(ood[-1], label=empty)], INFERER, log=None)
    assert (
        f"study {ood[-1]['study']}, field 'label', file {empty}: expected a label map with at least one labelled "
        "voxel (value > 0); all 19200 voxels are <= 0." in str(error.value)
    )
    assert net.calls[0] == 0


@pytest.mark.parametrize("workflow", ["evaluate", "evaluate_ood"])
def test_interrupted_run_keeps_the_earlier_outputs_and_leaves_no_partial_file(cohort, tmp_path, workflow):
    """An interruption (here Ctrl-C inside a network on the second study) writes nothing: the outputs of an
    earlier run stay as they were, byte for byte, and no temporary file is left."""
    out = tmp_path / "out"

    def run(networks):
        if workflow == "evaluate":
            return evaluate_networks(networks, records(cohort, "test"), INFERER, output_dir=out, log=None)
        return evaluate_ood(networks, records(cohort, "ood"), INFERER, output_dir=out, log=None)

    complete = Counting()
    run({"n": complete})  # the earlier, complete run
    calls_per_run = complete.calls[0]
    before = files_in(out)
    assert before and not any(name.startswith(".partial-") for name in before)
    with pytest.raises(KeyboardInterrupt):
        run({"n": Counting(stop_at=calls_per_run // 2 + 1)})  # in the second study's inference
    assert files_in(out) == before


def test_write_texts_is_all_or_nothing(tmp_path):
    """The report files of a run are written together: if one cannot be written, none is replaced."""
    (tmp_path / "a.csv").write_text("old a")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder is needed")
    with pytest.raises(OSError):
        write_texts({tmp_path / "a.csv": "new a", blocker / "b.json": "new b"})
    assert files_in(tmp_path) == {"a.csv": b"old a", "not_a_folder": b"a file where a folder is needed"}
    write_texts({tmp_path / "a.csv": "new a", tmp_path / "b.json": "new b"})
    assert (tmp_path / "a.csv").read_text() == "new a" and (tmp_path / "b.json").read_text() == "new b"


def test_short_uncompressed_file_is_refused_from_its_size(cohort, tmp_path):
    """Item 1 for a plain ``.nii`` (the issue's ``OSError: Expected 76800 bytes, got 38224``): the file is measured
    against its header (voxels from byte 352), so even one missing byte is refused with the sizes."""
    path = tmp_path / "short.nii"
    nib.save(nib.load(records(cohort, "test")[0]["reference"]), path)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"study s, field 'reference', file .*short.nii: cannot read it .*\(truncated "
                       r"or corrupted file\): EOFError: the header promises 76800 bytes of voxels \[40, 40, 12\] "
                       r"\(float32\) from byte 352, the file holds 77151 bytes\."):  # fmt: skip
        load_pet(path, where("s", "reference"))


def test_header_promising_a_huge_volume_is_refused_before_allocating(cohort, tmp_path):
    """A corrupted header (dims 32767^3 float64, ~281 TB) is refused from the file size, before any buffer."""
    source = records(cohort, "test")[0]["reference"]
    img = nib.load(source)
    header = img.header.copy()
    header.set_data_dtype(np.float64)
    raw = bytearray(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, header).to_bytes())
    raw[40:56] = np.array([3, 32767, 32767, 32767, 1, 1, 1, 1], "<i2").tobytes()  # dim[0:8]
    path = tmp_path / "huge.nii"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"study s, field 'reference', file .*huge.nii: cannot read it .*the header "
                       r"promises 281449207693304 bytes of voxels"):  # fmt: skip
        load_pet(path, where("s", "reference"))


def test_validate_label_transforms():
    """The array and dictionary transforms behind the label check: unchanged output for whole numbers in any
    storage, a message with the name, the expected form and the count for anything else."""
    whole = torch.tensor([0.0, 2.0, 10.0, 11.0]).reshape(1, 2, 2, 1)
    assert ValidateLabel()(whole) is whole
    assert ValidateLabel()(whole.to(torch.int16)) is not None
    data = {"label": whole}
    assert ValidateLabeld("label")(data) is data
    image = whole + torch.tensor([0.0, 0.25, 0.0, 0.5]).reshape(1, 2, 2, 1)
    with pytest.raises(ValueError, match=r"^'seg': expected an integer-valued label map.*found 2 non-integer voxel"):
        ValidateLabeld("seg")({"seg": image})
    with pytest.raises(ValueError, match=r"^liver mask: expected an integer-valued label map.*got shape \[2, 2, 1\]"):
        ValidateLabel("liver mask")(whole[0])
    with pytest.raises(ValueError, match=r"at least one labelled voxel \(value > 0\); all 4 voxels are <= 0"):
        ValidateLabel(allow_empty=False)(torch.zeros(1, 2, 2, 1))
    assert ValidateLabel()(torch.zeros(1, 2, 2, 1)) is not None  # empty maps are fine unless refused explicitly


# ---------------------------------------------------------------------------------------------- property tests


def nifti_copy(source: str, folder: Path, compressed: bool) -> Path:
    """``source`` copied into ``folder`` as ``.nii.gz`` (the cohort's bytes) or re-saved as plain ``.nii``."""
    folder.mkdir(parents=True, exist_ok=True)
    if compressed:
        path = folder / "volume.nii.gz"
        shutil.copyfile(source, path)
    else:
        path = folder / "volume.nii"
        nib.save(nib.load(source), path)
    return path


def outcome(path: Path, where_: str, label: bool = False):
    """:func:`load_pet` of ``path``: the volume ``[H, W, D]`` (numpy), or the ``ValueError`` message. Any other
    exception propagates and fails the test; a ``ValueError`` must name the path and the field."""
    try:
        return load_pet(path, where_, label=label).numpy()[0]
    except ValueError as e:
        message = str(e)
        assert str(path) in message and where_ in message, message
        return message


def decoded(path: Path) -> np.ndarray:
    """What the file holds, decoded independently of the code under test (nibabel, in full)."""
    return np.asarray(nib.load(str(path)).dataobj)


CASES = range(12)

#: byte offsets of the NIfTI-1 header fields that decide how the voxels are read: sizeof_hdr, dim, datatype and
#: bitpix, pixdim, vox_offset, scl_slope and scl_inter, magic
NIFTI_STRUCTURE = [*range(0, 4), *range(40, 56), *range(70, 74), *range(76, 120), *range(344, 348)]


@pytest.mark.parametrize("compressed", [True, False], ids=["nii.gz", "nii"])
@pytest.mark.parametrize("case", CASES)
def test_property_truncated_files_are_refused_naming_file_and_field(cohort, tmp_path, case, compressed):
    rng = np.random.default_rng([SEED, 1, case, compressed])
    path = nifti_copy(records(cohort, "test")[0]["realizations"][0], tmp_path, compressed)
    data = path.read_bytes()
    cut = int(rng.integers(0, len(data)))
    path.write_bytes(data[:cut])
    result = outcome(path, where("s", "realizations[0]"))
    assert isinstance(result, str), f"a file cut at byte {cut} of {len(data)} was accepted"
    assert "cannot read it" in result, result


@pytest.mark.parametrize("compressed", [True, False], ids=["nii.gz", "nii"])
@pytest.mark.parametrize("case", CASES)
def test_property_flipped_bytes_are_refused_or_read_exactly(cohort, tmp_path, case, compressed):
    """1-3 random bytes XORed with a random non-zero mask, anywhere in a ``.nii.gz``; in a ``.nii``, half of them in
    the header bytes that shape the volume (:data:`NIFTI_STRUCTURE`). ``.nii.gz``: accepted only if the
    voxels are exactly the original ones (a flip in the gzip header's time stamp changes nothing; elsewhere the
    CRC catches it). ``.nii``: accepted only if the result is what the corrupted file holds (a flipped voxel byte
    is a valid, different image) and passes the checks (finite, 3D)."""
    rng = np.random.default_rng([SEED, 2, case, compressed])
    source = records(cohort, "test")[0]["realizations"][0]
    path = nifti_copy(source, tmp_path, compressed)
    data = bytearray(path.read_bytes())
    for _ in range(int(rng.integers(1, 4))):
        header = not compressed and rng.random() < 0.5
        at = int(rng.choice(NIFTI_STRUCTURE)) if header else int(rng.integers(0, len(data)))
        data[at] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))
    result = outcome(path, where("s", "realizations[0]"))
    if isinstance(result, str):
        return
    expected = decoded(nifti_copy(source, tmp_path / "pristine", True)) if compressed else decoded(path)
    assert np.isfinite(result).all() and result.ndim == 3
    assert np.array_equal(result, expected.astype(np.float32))


@pytest.mark.parametrize("case", CASES)
def test_property_non_finite_voxels_are_refused_with_their_counts(cohort, tmp_path, case):
    """NaN/+inf/-inf at 1-4 random voxels of an image or of a label map stored as float32: refused, the message
    naming path and field and giving the exact numbers."""
    rng = np.random.default_rng([SEED, 3, case])
    record = records(cohort, "test")[0]
    field = str(rng.choice(["reference", "truth", "realizations[5]", "label"]))
    source = record["realizations"][5] if field.startswith("realizations") else record[field]
    path = tmp_path / "volume.nii.gz"
    img = nib.load(source)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float32), img.affine), path)
    n = int(rng.integers(1, 5))
    flat = rng.choice(int(np.prod(img.shape)), size=n, replace=False)
    voxels = [tuple(int(i) for i in np.unravel_index(f, img.shape)) for f in flat]
    values = [float(v) for v in rng.choice([np.nan, np.inf, -np.inf], size=n)]
    set_voxels(str(path), voxels, values)
    n_nan = sum(np.isnan(v) for v in values)
    result = outcome(path, where("s", field), label=field == "label")
    assert isinstance(result, str), f"{values} at {voxels} accepted"
    assert f"expected finite voxel values; found {n_nan} NaN and {n - n_nan} inf voxel(s) of 19200." in result


@pytest.mark.parametrize("case", CASES)
def test_property_label_replaced_by_a_float_image_is_refused(cohort, tmp_path, case):
    """``label`` pointing at a random float image of the cohort (any study, any image field): the study check
    refuses it, naming that file, the field 'label' and the expected form; the true label map (int16 or the same
    stored as float32) passes and reads back exactly."""
    rng = np.random.default_rng([SEED, 4, case])
    images = sorted(
        {r[f] for r in records(cohort, "test", None) + records(cohort, "ood", None) for f in ("reference", "truth")}
        | {p for r in records(cohort, "test", None) for p in r["realizations"]}
        | {r["input_120s"] for r in records(cohort, "ood", None)}
    )
    image = images[int(rng.integers(len(images)))]
    study = records(cohort, "test")[int(rng.integers(2))]
    with pytest.raises(ValueError) as error:
        check_study_files([(study["study"], {"reference": study["reference"], "label": image})])
    text = str(error.value)
    assert f"{where(study['study'], 'label')}, file {image}: expected {LABEL_FORM}; found " in text
    assert "non-integer voxel value(s)" in text and "is this an image rather than a label map?" in text

    truth = np.asarray(nib.load(study["label"]).dataobj).astype(np.int64)
    stored = tmp_path / "label_float32.nii.gz"
    nib.save(nib.Nifti1Image(truth.astype(np.float32), nib.load(study["label"]).affine), stored)
    for label in (study["label"], str(stored)):
        check_study_files([(study["study"], {"reference": study["reference"], "label": label})])
        assert np.array_equal(load_label(label, study["study"]), truth)


@pytest.mark.parametrize("files", ["", [""], ["  "]])
def test_blank_input_paths_are_refused_not_read_as_the_working_directory(files):
    """issue 16 item 9: '' was read as the working directory and reported with a hint to install pydicom."""
    from monai_tgd.transforms import check_pet_files

    with pytest.raises(ValueError, match="are not paths; expected NIfTI files or DICOM series folders") as excinfo:
        check_pet_files(files)
    assert "pydicom" not in str(excinfo.value)


def test_a_folder_that_is_no_dicom_series_gets_no_install_hint(tmp_path):
    """pydicom is a declared dependency: a folder that cannot be read names what a folder must hold instead."""
    from monai_tgd.transforms import check_pet_files

    (tmp_path / "notes.txt").write_text("not a DICOM slice")
    with pytest.raises(ValueError, match="a folder is read as a DICOM series") as excinfo:
        check_pet_files([tmp_path])
    assert "pip install" not in str(excinfo.value) and str(tmp_path) in str(excinfo.value)


@pytest.mark.parametrize("workflow", ["pretrain", "finetune_tgd"])
def test_bundle_training_checks_every_file_before_the_first_step(run_bundle, cohort, tmp_path, workflow):
    """Training reads every file of its datalist in full first: a corrupted file of the last training study stops
    the run before any step, naming study, field and path, with no checkpoint or model written."""
    section = {"pretrain": "pretrain_v1", "finetune_tgd": "finetune_v2"}[workflow]
    content = json.loads(Path(cohort).read_text())
    last = content[section][-1]
    field = next(k for k in last if k.startswith("noisy_"))
    target = Path(cohort).parent / last[field]
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    init = {} if workflow == "pretrain" else {"init_checkpoint": tiny_checkpoint(tmp_path / "base" / "model_v1.pt")}
    with pytest.raises(Exception) as error:
        run_bundle(workflow, datalist=str(cohort), **init)
    text = messages(error.value)
    assert f"study {last['study']}, field '{field}', file {target}: cannot read it" in text, text
    assert "truncated or corrupted file" in text
    assert not list((tmp_path / "runs").rglob("*.pt")) and not (tmp_path / "models").exists()
