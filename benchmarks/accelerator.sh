#!/usr/bin/env bash
# The benchmarks on an accelerator, as one prepared run of about 8 minutes (on an H200, at the default
# unroll=4; the steps' limits add up to 10.3), for a session that is lent a GPU machine: the device tool's
# `run` allows 10 minutes a command and 15 minutes a session. VARIANTS=1 adds variants.py (about 3
# minutes on an H200; measured twice there already), which then needs a second call or a shorter rest.
#
#   run(command="bash benchmarks/accelerator.sh", timeout_s=590)       # on the device machine
#   cp -r <files_at>/<device>/* benchmarks/results/<device>/             # back here, then commit
#
# Needs no install: the machine's image has jax (with CUDA), optax, flax, chex, pytest and matplotlib, and
# the package is imported from the working tree. Each step has its own time limit, and a step that fails
# or runs out leaves the others to run; the log says which. Results go to $OUT/<device>/ (the device
# tool brings back $OUT; at most 8 files, which this run never exceeds), or benchmarks/results/<device>/
# without $OUT. QUICK=1 runs every step in its quick form (about 5 minutes on this project's 2-core CPU),
# to check the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
py=${PYTHON:-python3}
device=$($py -c "from eproptax._bench import device_name; print(device_name())") || exit 1
dir="${OUT:-benchmarks/results}/$device"
mkdir -p "$dir"
log="$dir/log.txt"
quick=${QUICK:+--quick}

step() {  # step <seconds> <name> <command...>: runs the command with a time limit, logs its exit status
  local limit=$1 name=$2 start=$SECONDS status
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | grep -v "^WARNING: All log messages" | tee -a "$log"
  status=${PIPESTATUS[0]}
  echo "== $name: exit $status after $((SECONDS - start)) s" | tee -a "$log"
}

: >"$log"
step 30 devices $py -c "import jax; print(jax.__version__, jax.devices())"
command -v nvidia-smi >/dev/null && step 15 nvidia-smi nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
# correctness on the device: RTRL, BPTT and e-prop against each other and the references, in float64
# (17 tests: 40 s at unroll=1 on an H200, about 110 s at the default 4, where the unrolled bodies compile longer)
step 150 exactness $py -m pytest -q -x -p no:cacheprovider tests/test_exact.py
step 90 bench $py -m eproptax bench $quick --out "$dir"
# (target 5 compiles every rule, about 70 s at unroll=4; each run of targets 2 to 4 about 60 s)
step 260 targets $py benchmarks/targets.py $quick --runs 2 --out "$dir"
[ -n "${VARIANTS:-}" ] && step 200 variants $py benchmarks/variants.py $quick --out "$dir"
step 45 time-memory-vs-T $py benchmarks/time_memory_vs_T.py --quick --out "$dir"
step 30 profile $py benchmarks/profile.py --cell alif --rule "eprop (leaky readout)" --hidden 256 --batch 32 \
  --steps 40 --out "$dir"
ls -l "$dir" | tee -a "$log"
