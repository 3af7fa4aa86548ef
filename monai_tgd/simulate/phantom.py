"""Randomised 3D torso phantoms (chest to pelvis) with FDG-like uptake, 511 keV attenuation and label maps.

World coordinates are RAS millimetres: +x toward the patient's right, +y anterior, +z superior, with the origin
at the centre of the field of view (FOV). A :class:`Grid` samples that space; array axes are (x, y, z).

A phantom is a :class:`PhantomSpec` (a few dozen numbers drawn from a seed: body size from the BMI, organ
positions and sizes, uptakes, lesions, the out-of-distribution structure) that :func:`rasterize` paints on any
grid, later structures overriding earlier ones:

    body fat layer -> lean body -> spine -> kidneys -> liver -> lungs (the lung bases carve the liver dome)
    -> heart (blood pool + myocardium) -> bladder -> catheter -> lesions

Uptake is relative to soft tissue (= 1, the SUV-like unit of the whole simulator); attenuation is the linear
attenuation coefficient at 511 keV in 1/mm (:data:`MU_PER_MM`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

__all__ = [
    "Grid",
    "Lesion",
    "PhantomSpec",
    "LABELS",
    "LESION_LABEL_START",
    "MU_PER_MM",
    "UPTAKE",
    "BMI_RANGES",
    "BODY_MAX_RADIUS_MM",
    "random_phantom",
    "place_lesions",
    "rasterize",
    "label_names",
]

LABELS = {
    "background": 0,
    "body": 1,
    "liver": 2,
    "lung": 3,
    "bladder": 4,
    "heart": 5,
    "kidney": 6,
    "bone": 7,
    "ood": 8,
}
"""Integer label of each structure in the label maps; lesions get ``LESION_LABEL_START + i``."""
LESION_LABEL_START = 10

MU_PER_MM = {"water": 0.0096, "fat": 0.0090, "lung": 0.0026, "bone": 0.0150, "air": 0.0}
"""Linear attenuation coefficients at 511 keV in 1/mm (soft tissue ~ water 0.096/cm, lung 0.026/cm at
density ~0.27 g/cm3, spine as a cortical/trabecular mix 0.150/cm)."""

UPTAKE = {
    "soft_tissue": 1.0,
    "fat": 0.35,
    "liver": 2.5,
    "lung": 0.3,
    "kidney": 2.8,
    "spine": 1.5,
    "blood_pool": 1.6,
    "myocardium": 5.0,
    "bladder": 10.0,
    "ood_bladder": 80.0,
    "catheter": 20.0,
}
"""Nominal FDG uptake relative to soft tissue (SUV-like); each study scales each value by U(0.85, 1.15)."""

BMI_RANGES = {"low": (18.5, 22.5), "high": (29.0, 36.0)}
"""BMI drawn uniformly per class (the paper's classes: low < 23, high > 28)."""

BODY_SEMI_MM = (140.0, 95.0)
"""Lean body semi-axes (x, y) in mm at BMI 21, before the per-study size jitter."""
ABDOMEN_FAT_EXCESS = 0.3
"""The fat layer is up to this fraction thicker over the abdomen than over the chest and pelvis."""
BODY_EXPONENT = 2.6
"""Exponent of the superellipse of the body outline."""
BODY_MAX_RADIUS_MM = 215.0
"""Largest in-plane distance of the body outline (fat included) from the FOV axis: every phantom fits inside 0.9 x
the smallest reconstruction FOV radius of the built-in profiles (``tiny``: 243.75 mm). The BMI model stays below it;
a body that would exceed it is scaled down (lean body and fat together)."""


@dataclass(frozen=True)
class Grid:
    """A voxel grid. ``shape`` is (nx, ny, nz); ``voxel_mm`` is (dx, dy, dz) in mm; ``center_mm`` is the world
    position of the grid centre (the FOV centre, default the origin; x and y must stay 0 for a scanner grid)."""

    shape: tuple[int, int, int]
    voxel_mm: tuple[float, float, float]
    center_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates in mm along x, y and z (float32)."""
        return tuple(
            (c + (np.arange(n) - (n - 1) / 2) * d).astype(np.float32)
            for n, d, c in zip(self.shape, self.voxel_mm, self.center_mm)
        )

    def affine(self) -> np.ndarray:
        """4x4 RAS affine from voxel indices to world mm (diagonal voxel sizes, grid centre at ``center_mm``)."""
        aff = np.diag([*map(float, self.voxel_mm), 1.0])
        aff[:3, 3] = [c - (n - 1) / 2 * d for n, d, c in zip(self.shape, self.voxel_mm, self.center_mm)]
        return aff

    def refined(self, inplane: int, axial: int) -> Grid:
        """The same FOV sampled ``inplane`` times finer in x and y and ``axial`` times finer in z."""
        nx, ny, nz = self.shape
        dx, dy, dz = self.voxel_mm
        return Grid((nx * inplane, ny * inplane, nz * axial), (dx / inplane, dy / inplane, dz / axial), self.center_mm)


@dataclass(frozen=True)
class Lesion:
    """A spherical hot lesion: ``contrast`` is its uptake divided by the host organ's uptake."""

    label: int
    organ: str
    center_mm: tuple[float, float, float]
    diameter_mm: float
    contrast: float


@dataclass(frozen=True)
class PhantomSpec:
    """Every random parameter of one torso phantom; lengths in mm, uptakes relative to soft tissue.

    ``ellipsoids`` maps an organ name to ``(cx, cy, cz, ax, ay, az)``; ``body_*`` describe the lean body as a
    superellipse of semi-axes ``body_semi`` (x, y) with a fat layer of ``fat_mm`` (thicker over the abdomen);
    ``ood`` is None, "bladder" (irregular enlarged bladder, harmonic coefficients ``bladder_lobes``) or
    "catheter" (tube of ``catheter_radius_mm`` through ``catheter_path``).
    """

    bmi: float
    bmi_class: str
    body_semi: tuple[float, float]
    fat_mm: float
    z_scale: float
    ellipsoids: dict[str, tuple[float, ...]]
    spine: tuple[float, float, float]
    uptake: dict[str, float]
    myocardium_mm: float = 10.0
    ood: str | None = None
    bladder_lobes: tuple[float, ...] = ()
    catheter_path: tuple[tuple[float, float, float], ...] = ()
    catheter_radius_mm: float = 2.5
    lesions: tuple[Lesion, ...] = field(default_factory=tuple)


def random_phantom(rng: np.random.Generator, bmi_class: str, ood: str | None = None) -> PhantomSpec:
    """Draw a torso phantom (without lesions) from ``rng``.

    Args:
        rng: source of randomness; the phantom is a deterministic function of its state.
        bmi_class: "low" (BMI 18.5-22.5) or "high" (BMI 29-36): sets the fat layer and body size.
        ood: None, "bladder" or "catheter": the out-of-distribution structure of test studies.
    """
    if bmi_class not in BMI_RANGES:
        raise ValueError(f"bmi_class must be one of {sorted(BMI_RANGES)}, got {bmi_class!r}.")
    if ood not in (None, "bladder", "catheter"):
        raise ValueError(f"ood must be None, 'bladder' or 'catheter', got {ood!r}.")

    def u(lo: float, hi: float) -> float:
        return float(rng.uniform(lo, hi))

    bmi = u(*BMI_RANGES[bmi_class])
    lean = 1.0 + 0.006 * (bmi - 21.0)  # lean body grows slowly with BMI, the fat layer fast
    ax, ay = BODY_SEMI_MM[0] * lean * u(0.94, 1.06), BODY_SEMI_MM[1] * lean * u(0.94, 1.06)
    fat = 1.8 * (bmi - 18.0) + u(2.0, 5.0)
    thickest = (1.0 + ABDOMEN_FAT_EXCESS) * fat
    radius = _outline_radius(ax + thickest, ay + thickest)
    if radius > BODY_MAX_RADIUS_MM:  # keep the body inside the reconstruction FOV (never reached by the BMI model)
        s = BODY_MAX_RADIUS_MM / radius
        ax, ay, fat = ax * s, ay * s, fat * s
    h = u(0.95, 1.03)  # axial scale of all landmarks
    j = lambda s: u(-s, s)  # noqa: E731  (jitter of a position in mm)
    r = lambda: u(0.9, 1.1)  # noqa: E731  (relative size jitter)
    ellipsoids = {  # (cx, cy, cz, ax, ay, az); the liver and the right lung/kidney are at +x (patient's right)
        "liver": (0.35 * ax + j(8), 0.05 * ay + j(5), 50 * h + j(10), 0.63 * ax * r(), 0.8 * ay * r(), 85 * r()),
        "lung_r": (0.5 * ax + j(5), 0.0 + j(5), 175 * h + j(8), 0.38 * ax * r(), 0.78 * ay, 160 * h * r()),
        "lung_l": (-0.5 * ax + j(5), 0.0 + j(5), 180 * h + j(8), 0.36 * ax * r(), 0.78 * ay, 150 * h * r()),
        "heart": (-0.2 * ax + j(5), 0.35 * ay + j(4), 105 * h + j(8), 52 * r(), 42 * r(), 52 * r()),
        "kidney_r": (0.45 * ax + j(5), -0.45 * ay + j(4), -45 * h + j(8), 28 * r(), 25 * r(), 52 * r()),
        "kidney_l": (-0.45 * ax + j(5), -0.45 * ay + j(4), -35 * h + j(8), 28 * r(), 25 * r(), 52 * r()),
        "bladder": (0.0 + j(5), 0.3 * ay + j(4), -200 * h + j(6), 40 * r(), 30 * r(), 30 * r()),
    }
    lobes: tuple[float, ...] = ()
    path: tuple[tuple[float, float, float], ...] = ()
    if ood == "bladder":  # enlarged (x1.6-1.8), lobulated: radius modulated by low-order harmonics
        cx, cy, cz, bx, by, bz = ellipsoids["bladder"]
        s = u(1.6, 1.8)
        ellipsoids["bladder"] = (cx, cy + 10, cz + 15, bx * s, min(by * s, 0.55 * ay), bz * s)
        lobes = tuple(float(v) for v in (*rng.uniform(0.12, 0.22, 3), *rng.uniform(0, 2 * np.pi, 3)))
    elif ood == "catheter":  # from the bladder out through the anterior wall, along the skin, then caudally
        cx, cy, cz = ellipsoids["bladder"][:3]
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        skin_y = ay + fat + 6.0
        path = (
            (cx, cy, cz - 10),
            (cx + side * 30, skin_y, cz - 25),
            (cx + side * 0.7 * (ax + fat), 0.75 * (ay + fat) + 6, cz - 45),
            (cx + side * 0.7 * (ax + fat), 0.75 * (ay + fat) + 6, cz - 400),
        )
    uptake = {k: v * u(0.85, 1.15) for k, v in UPTAKE.items()}
    uptake["soft_tissue"] = 1.0  # the unit
    return PhantomSpec(
        bmi=bmi,
        bmi_class=bmi_class,
        body_semi=(ax, ay),
        fat_mm=fat,
        z_scale=h,
        ellipsoids=ellipsoids,
        spine=(0.0, -ay + 32.0, 17.0 * r()),
        uptake=uptake,
        ood=ood,
        bladder_lobes=lobes,
        catheter_path=path,
    )


def _superellipse(x: np.ndarray, y: np.ndarray, ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    p = BODY_EXPONENT
    return np.abs(x / ax) ** p + np.abs(y / ay) ** p <= 1.0


def _outline_radius(ax: float, ay: float) -> float:
    """Largest distance from the centre of the body superellipse of semi-axes ``ax``, ``ay`` (mm)."""
    t = np.linspace(0.0, np.pi / 2, 1025)
    e = 2.0 / BODY_EXPONENT
    return float(np.hypot(ax * np.cos(t) ** e, ay * np.sin(t) ** e).max())


def _segment_distance(points: tuple[np.ndarray, ...], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in mm from broadcast points ``(x, y, z)`` to the segment ``a``-``b``."""
    d = b - a
    t = sum((p - a[i]) * d[i] for i, p in enumerate(points)) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt(sum((p - a[i] - t * d[i]) ** 2 for i, p in enumerate(points)))


def rasterize(spec: PhantomSpec, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint ``spec`` on ``grid`` by point sampling at voxel centres.

    Returns:
        ``(activity, mu, labels)``, each of shape ``grid.shape``: activity in SUV-like units (float32), linear
        attenuation at 511 keV in 1/mm (float32) and the label map (int16, see :data:`LABELS`).
    """
    axes = grid.axes()
    act = np.zeros(grid.shape, np.float32)
    mu = np.zeros(grid.shape, np.float32)
    lab = np.zeros(grid.shape, np.int16)
    up = spec.uptake

    def region(lo, hi) -> tuple[tuple[slice, ...], tuple[np.ndarray, ...]]:
        """Index box of the voxels whose centres lie in [lo, hi] (mm), and their broadcast coordinates."""
        sl = tuple(slice(np.searchsorted(a, l), np.searchsorted(a, h, side="right")) for a, l, h in zip(axes, lo, hi))
        x, y, z = (a[s_] for a, s_ in zip(axes, sl))
        return sl, (x[:, None, None], y[None, :, None], z[None, None, :])

    def paint(sl: tuple[slice, ...], mask: np.ndarray, label: int, a: float, m: float) -> None:
        mask = np.broadcast_to(mask, act[sl].shape)
        act[sl][mask], mu[sl][mask], lab[sl][mask] = a, m, label

    def ellipsoid(e: tuple[float, ...], grow: float = 1.0):
        """Box around ellipsoid ``e`` (semi-axes times ``grow``), normalised coordinates and squared radius."""
        c, semi = np.asarray(e[:3]), np.asarray(e[3:]) * grow
        sl, (x, y, z) = region(c - semi, c + semi)
        u, v, w = (x - e[0]) / e[3], (y - e[1]) / e[4], (z - e[2]) / e[5]
        return sl, u, v, w, u * u + v * v + w * w

    everywhere, (x, y, z) = region((-np.inf,) * 3, (np.inf,) * 3)
    ax, ay = spec.body_semi
    # fat is ~30 % thicker over the abdomen (z around -75 mm) than over the chest and pelvis
    fat = spec.fat_mm * (1.0 + ABDOMEN_FAT_EXCESS * np.exp(-(((z + 75.0) / (125.0 * spec.z_scale)) ** 4)))
    paint(everywhere, _superellipse(x, y, ax + fat, ay + fat), LABELS["body"], up["fat"], MU_PER_MM["fat"])
    paint(everywhere, _superellipse(x, y, ax, ay), LABELS["body"], up["soft_tissue"], MU_PER_MM["water"])
    sx, sy, sr = spec.spine
    paint(everywhere, (x - sx) ** 2 + (y - sy) ** 2 <= sr**2, LABELS["bone"], up["spine"], MU_PER_MM["bone"])
    e = spec.ellipsoids
    for name, label, key, m in (
        ("kidney_r", "kidney", "kidney", "water"),
        ("kidney_l", "kidney", "kidney", "water"),
        ("liver", "liver", "liver", "water"),
        ("lung_r", "lung", "lung", "lung"),
        ("lung_l", "lung", "lung", "lung"),
        ("heart", "heart", "myocardium", "water"),
    ):
        sl, *_, r2 = ellipsoid(e[name])
        paint(sl, r2 <= 1, LABELS[label], up[key], MU_PER_MM[m])
    cx, cy, cz, hx, hy, hz = e["heart"]
    t = spec.myocardium_mm
    sl, *_, r2 = ellipsoid((cx, cy, cz, hx - t, hy - t, hz - t))
    paint(sl, r2 <= 1, LABELS["heart"], up["blood_pool"], MU_PER_MM["water"])

    if spec.ood == "bladder":
        a1, a2, a3, p1, p2, p3 = spec.bladder_lobes
        sl, u, v, w, r2 = ellipsoid(e["bladder"], grow=1.0 + a1 + a2 + a3)
        phi = np.arctan2(v, u)
        cos_polar = w / np.sqrt(np.maximum(r2, 1e-12))
        radius = 1.0 + a1 * np.cos(2 * phi + p1) + a2 * np.cos(3 * phi + p2) + a3 * cos_polar * np.cos(phi + p3)
        paint(sl, r2 <= radius**2, LABELS["ood"], up["ood_bladder"], MU_PER_MM["water"])
    else:
        sl, *_, r2 = ellipsoid(e["bladder"])
        paint(sl, r2 <= 1, LABELS["bladder"], up["bladder"], MU_PER_MM["water"])
    if spec.ood == "catheter":
        pts = [np.asarray(p, np.float32) for p in spec.catheter_path]
        for a, b in zip(pts[:-1], pts[1:]):
            rad = spec.catheter_radius_mm
            sl, xyz = region(np.minimum(a, b) - rad, np.maximum(a, b) + rad)
            paint(sl, _segment_distance(xyz, a, b) <= rad, LABELS["ood"], up["catheter"], MU_PER_MM["water"])

    for les in spec.lesions:
        c, rad = np.asarray(les.center_mm), les.diameter_mm / 2
        sl, (x, y, z) = region(c - rad, c + rad)
        sphere = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= rad**2
        paint(sl, sphere, les.label, up[les.organ] * les.contrast, MU_PER_MM["water"])  # solid tissue
    return act, mu, lab


def place_lesions(
    spec: PhantomSpec,
    grid: Grid,
    rng: np.random.Generator,
    lesions: list[tuple[str, float, float]],
    margin_mm: float = 4.0,
) -> PhantomSpec:
    """Return ``spec`` with spherical lesions placed at random voxel centres of ``grid`` inside their organ.

    Args:
        lesions: ``(organ, diameter_mm, contrast)`` per lesion, organ "liver" or "lung". A centre is drawn
            among the voxel centres whose distance to the organ boundary and to the other lesions exceeds the
            radius plus ``margin_mm``; centres on voxel centres keep small lesions visible in the label map.

    Raises:
        ValueError: an unknown organ, or no room left in the organ for a lesion of that size.
    """
    _, _, lab = rasterize(replace(spec, lesions=()), grid)
    xs, ys, zs = grid.axes()
    placed: list[Lesion] = []
    free = np.ones(grid.shape, bool)
    for i, (organ, diameter, contrast) in enumerate(lesions):
        if organ not in ("liver", "lung"):
            raise ValueError(f"lesion organ must be 'liver' or 'lung', got {organ!r}.")
        inside = (lab == LABELS[organ]) & free
        nonzero = np.argwhere(inside)
        lo = nonzero.min(0) if len(nonzero) else np.zeros(3, int)
        box = tuple(slice(a, b + 1) for a, b in zip(lo, nonzero.max(0) if len(nonzero) else lo - 1))
        dist = ndimage.distance_transform_edt(np.pad(inside[box], 1), sampling=grid.voxel_mm)[1:-1, 1:-1, 1:-1]
        candidates = np.argwhere(dist > diameter / 2 + margin_mm) + lo
        if len(candidates) == 0:
            raise ValueError(f"no room for a {diameter} mm lesion in the {organ} on this grid.")
        ix, iy, iz = candidates[rng.integers(len(candidates))]
        centre = (float(xs[ix]), float(ys[iy]), float(zs[iz]))
        placed.append(Lesion(LESION_LABEL_START + i, organ, centre, float(diameter), float(contrast)))
        x, y, z = xs[:, None, None], ys[None, :, None], zs[None, None, :]
        free &= (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 > (diameter + margin_mm) ** 2
    return replace(spec, lesions=tuple(placed))


def label_names(spec: PhantomSpec) -> dict[int, str]:
    """Names of the labels of this phantom's label map (organs, its OOD structure and each lesion)."""
    names = {v: k for k, v in LABELS.items() if k != "ood"}
    if spec.ood is not None:
        names[LABELS["ood"]] = f"ood_{spec.ood}"
    for les in spec.lesions:
        names[les.label] = f"lesion_{les.label - LESION_LABEL_START}_{les.organ}"
    return names
