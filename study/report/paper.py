"""The paper's numbers (Section 4 and Table 1), for the side-by-side columns, and how its qualitative claims are
read."""

from __future__ import annotations

PAPER = {
    "flagged_pct": {0.3: 51.4, 0.4: 51.6, 0.5: 53.0, 0.6: 67.3},
    "lesion_bias": {"v1-net": -6.30, "v2-net": -4.07, "FT-net": -4.71, "TGD-net": -3.77},
    "liver_cov": {"v1-net": 6.02, "v2-net": 8.56, "FT-net": 7.87, "TGD-net": 6.46},
    "time_saved_pct": 64.0,
}
#: how the paper's qualitative online claims are read: "the artefact disappears" = OOD error at least this much lower,
#: "similar denoising" = liver CoV within this much of the base's (percent, relative)
ONLINE_MARGIN_PCT = 10.0
