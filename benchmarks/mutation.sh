#!/usr/bin/env bash
# Mutation testing of the modules whose numbers the project publishes (docs/mutation_testing.md).
#
#   bash benchmarks/mutation.sh                  # all mutants of the configured modules
#   bash benchmarks/mutation.sh 'monai_tgd.kse*' # only mutants whose name matches (mutmut's glob syntax)
#
# Needs the `mutation` extra (pip install -e '.[mutation,test]'). The tool (mutmut 3) and the modules/tests it
# uses are configured in pyproject.toml [tool.mutmut]. The repository is copied to a scratch folder and mutmut runs
# there, so nothing is written into this working tree; the scratch folder (and its mutants/ with every result) is
# kept and printed at the end, for `mutmut show <mutant>` / `mutmut browse` from inside it.
#
# Environment:
#   MUTATION_DIR       scratch folder (default: a new mktemp -d folder); reused, so a rerun only retests changed code
#   MUTATION_CHILDREN  parallel test processes (default 2)
#   PYTEST_ADDOPTS     passed to every pytest run, e.g. "--deselect tests/test_x.py::test_y" for a test that fails
#                      on the unmutated code (mutmut refuses to start while any selected test fails)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRATCH="${MUTATION_DIR:-$(mktemp -d -t monai-tgd-mutation.XXXXXX)}"
CHILDREN="${MUTATION_CHILDREN:-2}"

command -v mutmut >/dev/null || { echo "mutmut not found: pip install -e '.[mutation,test]'" >&2; exit 1; }

# Copy the sources and tests (not the venv, git data, caches or earlier mutants) into the scratch folder.
mkdir -p "$SCRATCH"
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=__pycache__ --exclude=./mutants \
    --exclude='*.egg-info' --exclude=./runs --exclude=./study_runs --exclude='./bundles/*/data' \
    -cf - . | tar -C "$SCRATCH" -xf -
cd "$SCRATCH"

# One BLAS/OpenMP thread per test process: the parallelism is mutmut's children.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# mutmut puts "$SCRATCH/mutants" first on sys.path; the editable install of monai_tgd is only a fallback finder
# (appended to sys.meta_path), so the tests import the mutated copy. mutmut itself aborts if the tests never reach
# a mutated function ("recorded trampoline hits but none match any mutant key").
start=$(date +%s)
mutmut run --max-children "$CHILDREN" "$@"
end=$(date +%s)

mutmut results --all true > mutants/results.txt
python - "$((end - start))" "$SCRATCH" <<'PY'
import collections, re, sys

per = collections.defaultdict(collections.Counter)
for line in open("mutants/results.txt"):
    m = re.match(r"\s*(\S+)__mutmut_\d+: (.+)$", line.strip())
    if not m:
        continue
    name, status = m.groups()
    module = name.split(".x_")[0].split(".xǁ")[0]
    per[module][status.strip()] += 1
statuses = ["killed", "survived", "timeout", "no tests", "suspicious", "segfault", "skipped", "not checked"]
statuses += sorted({s for c in per.values() for s in c} - set(statuses))
print(f"\n{'module':34s}" + "".join(f"{s:>12s}" for s in statuses) + f"{'total':>8s}{'kill %':>8s}")
total = collections.Counter()
for module in sorted(per):
    c = per[module]
    total.update(c)
    n = sum(c.values())
    print(f"{module:34s}" + "".join(f"{c[s]:12d}" for s in statuses) + f"{n:8d}{100 * c['killed'] / n:8.1f}")
n = sum(total.values())
if n:
    print(f"{'TOTAL':34s}" + "".join(f"{total[s]:12d}" for s in statuses) + f"{n:8d}{100 * total['killed'] / n:8.1f}")
print(f"\nwall time {sys.argv[1]} s; results and survivors in {sys.argv[2]}")
print("(cd there, then `mutmut results` / `mutmut show NAME` / `mutmut browse`)")
PY
