#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md from one prepared GPU machine, in two phases run back to back:
#
#   benchmarks/gpu_session.sh table     # the reference table, seeds 0 1 2 trained side by side on one GPU
#   benchmarks/gpu_session.sh measure   # serving on the GPU (CUDA graphs, NVML), then `bench --profile full`
#   benchmarks/gpu_session.sh testbed   # `bench --profile quick --edge-device rpi4`: an emulated Raspberry Pi 4
#                                       # on one CPU core, the expert server on the GPU (trains its own models)
#   benchmarks/gpu_session.sh paper-scale  # `bench --profile paper-scale`: DeiT-Tiny on the emulated rpi4 and
#                                          # snapdragon-820 cores, DeiT-Small experts on the GPU (untrained
#                                          # weights; ~15 min on 2 CPU cores with the server on a core)
#   benchmarks/gpu_session.sh specialists  # progressive vs static specialists (benchmarks/specialists.py,
#                                          # profile gpu): the 500-a-class regime, seed 0 with its screens,
#                                          # then seeds 1 and 2 side by side
#
# `measure` reuses the seed-0 models of `table` (the same configs the full profile trains), so the
# two phases must run on the same machine. Results and logs land in $OUT (default /tmp/gpu-out) as
# one archive per phase. Where the machine lacks packages, wheels in .whl/ are installed first, and
# Fashion-MNIST is read from $ASKEXPERT_DATA (default: .fmnist/ in the repository, else the usual places).
# A rehearsal on a CPU with small budgets: SEEDS="0" TABLE_ARGS="--set-generalist train.epochs=1 ..."
# BENCH_PROFILE=quick benchmarks/gpu_session.sh table|measure
#
# Measured on one H100 (2026-11-26, three seeds side by side, 16 threads each): the generalist
# took ~200 s and the general model ~230 s of training per seed, the two expert strategies ~230 s
# more, so `table` needs about 12 minutes there; plan a session's 15 device minutes around it.
set -u
phase=${1:?usage: gpu_session.sh table|measure|testbed [seconds]}
budget=${2:-400}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" runs/gpu/logs
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .fmnist/fashion-mnist ] && export ASKEXPERT_DATA=${ASKEXPERT_DATA:-$PWD/.fmnist}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv > runs/gpu/logs/gpu.csv 2>&1

case $phase in
table)
    for seed in ${SEEDS:-0 1 2}; do
        # a few CPU threads each: three processes at the default (every core) oversubscribe the CPU
        # shellcheck disable=SC2086
        OMP_NUM_THREADS=${SEED_THREADS:-5} timeout $((budget - 90)) $PY benchmarks/experts_table.py --profile gpu \
            --seeds $seed --output-dir runs/gpu ${TABLE_ARGS:-} \
            --results runs/gpu/results > runs/gpu/logs/table-seed$seed.log 2>&1 &
    done
    wait
    echo "seeds finished after $(( $(date +%s) - start )) s: $(ls runs/gpu/results/experts-table-gpu 2>/dev/null)"
    $PY benchmarks/experts_table.py --profile gpu --summary --results runs/gpu/results \
        2>runs/gpu/logs/table-all.err | tee runs/gpu/logs/table-all.log
    for d in runs/gpu/*-seed*/; do  # each model's metrics, for the training figures
        for f in metrics.json metrics.jsonl experts.json; do
            [ -f "$d/$f" ] && cp "$d/$f" "runs/gpu/logs/$(basename "$d")-$f"
        done
    done
    tar czf "$OUT/table.tar.gz" runs/gpu/logs runs/gpu/results 2>/dev/null
    ;;
measure)
    g=runs/gpu/generalist-fmnist-seed0
    timeout 150 $PY benchmarks/serving.py --experts runs/gpu/experts-progressive-fmnist-seed0 --generalist $g \
        --requests 600 --seconds 6 --results runs/gpu/results-serving 2>&1 | tee runs/gpu/logs/serving.log
    profile=${BENCH_PROFILE:-full}
    mkdir -p runs/gpu/bench-$profile/cells
    $PY - "runs/gpu/bench-$profile/cells/models.json" <<'EOF'
import json, pathlib, sys
root = pathlib.Path("runs/gpu")
models = {"generalist": str(root / "generalist-fmnist-seed0"), "general": str(root / "general-fmnist-seed0"),
          "progressive": str(root / "experts-progressive-fmnist-seed0"),
          "static": str(root / "experts-static-fmnist-seed0"),
          "partition": json.loads((root / "partition-seed0.json").read_text())["experts"]}
pathlib.Path(sys.argv[1]).write_text(json.dumps(models, indent=1))
EOF
    timeout $(( $(left) > 10 ? $(left) - 5 : 10 )) $PY -m askexpert.cli bench --profile $profile --output-dir runs/gpu \
        --results runs/gpu/results-bench \
        2>runs/gpu/logs/bench.err | tee runs/gpu/logs/bench.log
    cp -r runs/gpu/bench-$profile/cells runs/gpu/logs/bench-cells 2>/dev/null
    tar czf "$OUT/measure.tar.gz" runs/gpu/logs runs/gpu/results-serving runs/gpu/results-bench 2>/dev/null
    ;;
testbed)
    mkdir -p runs/gpu/logs
    cat /sys/fs/cgroup/cgroup.controllers /proc/mounts > runs/gpu/logs/cgroups.txt 2>&1
    timeout $(( $(left) > 10 ? $(left) - 5 : 10 )) $PY -m askexpert.cli bench --profile quick --edge-device rpi4 \
        --output-dir runs/gpu --results runs/gpu/results-testbed > runs/gpu/logs/testbed.log 2>&1
    echo "bench exit $?" >> runs/gpu/logs/testbed.log
    cp -r runs/gpu/bench-quick/cells-rpi4 runs/gpu/logs/testbed-cells 2>/dev/null
    tar czf "$OUT/testbed.tar.gz" runs/gpu/logs runs/gpu/results-testbed 2>/dev/null
    ;;
specialists)
    # seed 0 screens first (the other seeds use its choice), then seeds 1 and 2 side by side
    r=runs/gpu/results-specialists
    OMP_NUM_THREADS=${SEED_THREADS:-5} timeout $(( $(left) > 60 ? $(left) / 2 : 30 )) $PY benchmarks/specialists.py \
        --profile gpu --regime 500 --seeds 0 --sweep --output-dir runs/gpu/specialists --results $r \
        > runs/gpu/logs/specialists-500-seed0.log 2>&1
    for seed in 1 2; do
        OMP_NUM_THREADS=${SEED_THREADS:-5} timeout $(( $(left) > 60 ? $(left) - 30 : 30 )) $PY benchmarks/specialists.py \
            --profile gpu --regime 500 --seeds $seed --output-dir runs/gpu/specialists --results $r \
            > runs/gpu/logs/specialists-500-seed$seed.log 2>&1 &
    done
    wait
    $PY benchmarks/specialists.py --summary --results $r 2>&1 | tee runs/gpu/logs/specialists-summary.log
    tar czf "$OUT/specialists.tar.gz" runs/gpu/logs $r 2>/dev/null
    ;;
paper-scale)
    timeout $(( $(left) > 10 ? $(left) - 5 : 10 )) $PY -m askexpert.cli bench --profile paper-scale \
        --devices ${SCALE_DEVICES:-rpi4 snapdragon-820} --scale-images ${SCALE_IMAGES:-100} \
        --output-dir runs/gpu --results runs/gpu/results > runs/gpu/logs/paper-scale.log 2>&1
    echo "bench exit $?" >> runs/gpu/logs/paper-scale.log
    tar czf "$OUT/paper-scale.tar.gz" runs/gpu/logs runs/gpu/results/paper-scale 2>/dev/null
    ;;
*)
    echo "unknown phase $phase: table, measure, testbed, paper-scale or specialists" >&2
    exit 2
    ;;
esac
echo "phase $phase done in $(( $(date +%s) - start )) s"
