"""Simulated whole-body FDG-PET cohort: phantoms, 2D PET acquisition, OSEM v1/v2, cohort writer.

Generate the default cohort with ``python -m monai_tgd.simulate --profile quick --out DIR`` or
:func:`generate_cohort`; see ``docs/simulator.md`` for the physics and the datalist schema.
"""

from .acquisition import Rates, ScannerModel, draw_counts, expected_rates, split_counts, thin_counts
from .cohort import PROFILES, Profile, StudyPlan, generate_cohort, plan_cohort, settings_hash, simulate_study
from .osem import ReconProtocol, osem, postfilter, protocol
from .phantom import LABELS, Grid, Lesion, PhantomSpec, label_names, place_lesions, random_phantom, rasterize
from .projector import Geometry, SystemMatrix, joseph_matrix, system_matrix

__all__ = [
    "generate_cohort",
    "plan_cohort",
    "settings_hash",
    "simulate_study",
    "Profile",
    "StudyPlan",
    "PROFILES",
    "Grid",
    "Lesion",
    "PhantomSpec",
    "LABELS",
    "random_phantom",
    "place_lesions",
    "rasterize",
    "label_names",
    "Geometry",
    "SystemMatrix",
    "joseph_matrix",
    "system_matrix",
    "ScannerModel",
    "Rates",
    "expected_rates",
    "draw_counts",
    "thin_counts",
    "split_counts",
    "ReconProtocol",
    "protocol",
    "osem",
    "postfilter",
]
