"""Command line: ``python -m monai_tgd.simulate --profile quick --out DIR [--seed 0] [--workers N]``."""

from __future__ import annotations

import argparse
import sys
import time

from .cohort import PROFILES, generate_cohort


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_tgd.simulate",
        description="Generate (or reuse) a simulated whole-body FDG-PET cohort with a MONAI datalist.",
    )
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES), help="cohort size (default: quick)")
    parser.add_argument("--out", required=True,
                        help="cohort folder: new, empty, or holding this profile's and seed's cohort (created if "
                             "needed; any other non-empty folder is refused)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="cohort seed, >= 0 (default: 0)")
    parser.add_argument("--workers", type=int, default=None, help="simulation processes (default: min(2, cores))")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if not args.out.strip():
        parser.error(f"--out must be a folder path (a new or empty folder), got {args.out!r}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    start = time.perf_counter()
    try:
        path = generate_cohort(args.out, args.profile, args.seed, args.workers, progress=not args.no_progress,
                               log=lambda msg: print(msg, file=sys.stderr))  # fmt: skip
    except (PermissionError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(path)
    print(f"elapsed {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
