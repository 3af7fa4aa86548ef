"""Benchmark of monai_tgd.simulate: reconstruction time per volume (v1, v2), sparse vs rotation projector, and
the whole quick cohort.

Usage: ``python benchmarks/bench_simulate.py [--profile quick] [--skip-cohort] [--stats COHORT_DIR]``. Timings
depend on machine load. ``--stats`` only prints image statistics of the test studies of an existing cohort
(liver bias at 600 s, liver pixel CoV at 60 s and 600 s, ensemble CoV over the 60 s realisations, lesion recovery).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from monai_tgd.simulate import PROFILES, generate_cohort, osem, plan_cohort, protocol, system_matrix


def rotation_forward(images: torch.Tensor, angles: np.ndarray) -> torch.Tensor:
    """Reference projector: rotate ``images`` (n_slices, 1, n, n) with grid_sample and sum along y, per angle."""
    out = []
    for theta in angles:
        c, s = math.cos(theta), math.sin(theta)
        mat = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=images.dtype).expand(images.shape[0], 2, 3)
        grid = F.affine_grid(mat, list(images.shape), align_corners=False)
        out.append(F.grid_sample(images, grid, align_corners=False).sum(dim=2))
    return torch.stack(out, 1)


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def cohort_stats(root: str) -> None:
    """Print image statistics of the test studies of the cohort in ``root`` (see the module docstring)."""
    import json
    from pathlib import Path

    import nibabel as nib
    from scipy import ndimage

    root = Path(root)
    datalist = json.loads((root / "datalist.json").read_text())
    plane = np.zeros((3, 3, 3), bool)
    plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    load = lambda p: np.asarray(nib.load(root / p).dataobj, dtype=np.float64)  # noqa: E731
    for rec in datalist["test"]:
        label, truth, ref = load(rec["label"]), load(rec["truth"]), load(rec["reference"])
        liver = ndimage.binary_erosion(label == 2, plane, iterations=3)  # liver eroded 3 pixels in-plane
        reals = np.stack([load(p) for p in rec["realizations"]])
        cov = lambda img: img[liver].std() / img[liver].mean()  # noqa: E731
        ensemble = reals.std(0, ddof=1)[liver].mean() / reals.mean(0)[liver].mean()
        lesion = label == rec["lesions"][0]["label"]
        bias = ref[liver].mean() / truth[liver].mean() - 1
        recovery = ref[lesion].mean() / truth[lesion].mean()
        print(f"{rec['study']:20s} {rec['recon']}: liver bias 600 s {bias:+.3f}, "
              f"pixel CoV 60 s {np.mean([cov(r) for r in reals]):.3f}, 600 s {cov(ref):.3f}, "
              f"ensemble CoV 60 s {ensemble:.3f}, lesion 0 recovery 600 s {recovery:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    parser.add_argument("--skip-cohort", action="store_true", help="skip the whole-cohort timing")
    parser.add_argument("--stats", metavar="COHORT_DIR", help="only print test-study statistics of a cohort")
    args = parser.parse_args()
    if args.stats:
        cohort_stats(args.stats)
        return
    prof = PROFILES[args.profile]
    g, nz = prof.geometry, prof.n_slices
    print(f"profile {prof.name}: {g.n_pixels}x{g.n_pixels}x{nz} voxels, {g.n_angles} angles x {g.n_bins} bins, "
          f"{prof.iterations} iterations x {prof.subsets} subsets, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip

    t0 = time.perf_counter()
    sm = system_matrix(g, prof.subsets)
    sm.back(np.zeros((len(sm.subset_rows[0]), 1), np.float32), 0)
    print(f"system matrix build: {time.perf_counter() - t0:.2f} s ({sm.nnz / 1e6:.1f} M non-zeros)")

    rng = np.random.default_rng(0)
    x = rng.random((g.n_pixels**2, nz), dtype=np.float32) * g.fov_mask.reshape(-1, 1)
    t_sparse = best_of(lambda: sm.forward(x))
    imgs = torch.from_numpy(np.ascontiguousarray(x.T.reshape(nz, 1, g.n_pixels, g.n_pixels)))
    t_rot = best_of(lambda: rotation_forward(imgs, g.angles))
    print(f"forward projection of one volume: sparse {t_sparse * 1e3:.0f} ms, rotation/grid_sample "
          f"{t_rot * 1e3:.0f} ms, ratio {t_rot / t_sparse:.1f}x")  # fmt: skip

    a = np.full((g.n_rows, nz), 0.2, np.float32)
    b = np.full((g.n_rows, nz), 0.5, np.float32)
    sino = rng.poisson(20.0, (1, g.n_rows, nz)).astype(np.int32)
    for version in ("v1", "v2"):
        recon = protocol(version, prof.scanner.psf_fwhm_mm, prof.iterations, prof.subsets)
        t1 = best_of(lambda: osem(sino, [60.0], a, b, prof.scanner.sensitivity, g, recon))
        seven = np.repeat(sino, 7, axis=0)
        t7 = best_of(lambda: osem(seven, [60.0] * 7, a, b, prof.scanner.sensitivity, g, recon), repeat=1)
        print(f"OSEM {version}: {t1:.2f} s per volume alone, {t7 / 7:.2f} s per volume in a 7-frame study")

    if not args.skip_cohort:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            generate_cohort(out, prof, seed=0, progress=False)
            print(f"whole {prof.name} cohort ({len(plan_cohort(prof))} studies): {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
