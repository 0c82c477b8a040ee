#!/usr/bin/env bash
# The GPU benchmark runs behind docs/benchmarks.md, one phase per call (each fits a 10-minute slot):
#
#   bash scripts/gpu_benchmarks.sh throughput OUT_DIR   # SCN 256²/512² training speed: per-sample CPU path vs fast path
#   bash scripts/gpu_benchmarks.sh accuracy   OUT_DIR   # SCN time to accuracy: MINUTES (default 7) of training (the bundle's
#                                                       # max_minutes: LR decayed over the time budget), MRE vs minutes
#   bash scripts/gpu_benchmarks.sh bundles    OUT_DIR   # adv_posenet, kneel, interactive_kp (configs/hand.json) on the hand set
#                                                       # and interactive_kp on AASCE, side by side
#   bash scripts/gpu_benchmarks.sh summary    OUT_DIR   # one line per recorded run
#
# HAND / SPINE: datalists (default: the downscaled copies written by scripts/downscale_datalist.py into .devdata/,
# see docs/benchmarks.md); WORKERS: DataLoader workers per run; EVAL_SECTION: the section the trained model is
# evaluated on (default: the datalist's test split when it has one, else validation). Every run writes
# OUT_DIR/<name>.json and .log. --overrides are top-level config ids of the bundle's train.json (evaluation and
# inference take only the run-level ones: the trained model's record sets the rest); KNEEL's overrides apply to
# both training runs (train.json, then stage2.json), so they must not be ids that stage2.json sets itself.
set -u
phase=${1:?phase: throughput | accuracy | bundles}
out=${2:-runs/bench}
hand=${HAND:-.devdata/hand_xray/datalist.json}
spine=${SPINE:-.devdata/spine_aasce/datalist.json}
workers=${WORKERS:-12}
mkdir -p "$out"

bench() {  # bench NAME LIMIT_S ARGS...: one benchmark run, killed after LIMIT_S seconds
    local name=$1 limit=$2
    shift 2
    timeout "$limit" python scripts/benchmark.py run --out "$out/$name.json" --section validation \
        ${EVAL_SECTION:+--eval_section "$EVAL_SECTION"} \
        --latency_images 20 --warmup 3 --latency_devices "${LATENCY_DEVICES:-cuda}" "$@" >"$out/$name.log" 2>&1
    echo "$name: exit $? ($(date -u +%T))"
}

fast="\"amp\": true, \"channels_last\": true, \"cudnn_benchmark\": true, \"augment_on_device\": true, \"num_workers\": $workers"
case "$phase" in
throughput)
    bench scn_hand256_b8_cpuaug_gpu 100 --bundle scn --datalist "$hand" --minutes 0.5 \
        --overrides "{\"batch_size\": 8, \"num_workers\": $workers, \"val_interval\": 10}"
    bench scn_hand256_b8_fast_gpu 100 --bundle scn --datalist "$hand" --minutes 0.5 \
        --overrides "{\"batch_size\": 8, $fast, \"val_interval\": 10}"
    [ -n "${COMPILE:-}" ] && bench scn_hand256_b8_fast_compile_gpu 150 --bundle scn --datalist "$hand" --minutes 1 \
        --overrides "{\"batch_size\": 8, $fast, \"compile\": true, \"val_interval\": 10}"
    ;;
accuracy)
    bench "scn_hand${SIZE:-512}_tta_gpu" 550 --bundle scn --datalist "$hand" ${CONFIG:+--config "$CONFIG"} \
        --minutes "${MINUTES:-7}" --epochs "${EPOCHS:-100000}" \
        --overrides "{\"batch_size\": ${BATCH:-8}, $fast, \"max_minutes\": ${MINUTES:-7}, \"val_interval\": ${VAL_INTERVAL:-5}${EXTRA:+, $EXTRA}}"
    ;;
bundles)
    # run side by side on the one GPU: their accuracy figures stand, their speed figures are shared-GPU figures
    w=$((workers / 4))
    gpu="\"amp\": true, \"cudnn_benchmark\": true, \"num_workers\": $w"
    bench adv_posenet_hand_gpu 500 --bundle adv_posenet --config hand --datalist "$hand" --minutes "${MINUTES:-5}" \
        --overrides "{\"num_workers\": $w, \"val_interval\": 10, \"overlay_interval\": 0}" &
    bench interactive_kp_spine_gpu 500 --bundle interactive_kp --datalist "$spine" --minutes "${MINUTES:-5}" \
        --overrides "{$gpu, \"val_interval\": 10}" &
    bench interactive_kp_hand_gpu 500 --bundle interactive_kp --config hand --datalist "$hand" --minutes "${MINUTES:-5}" \
        --overrides "{$gpu, \"val_interval\": 10}" &
    # KNEEL: --minutes applies to each of its two training runs (KNEEL_MINUTES; both timed, the accuracy is end to
    # end); its batch is images_per_batch (stage 2 sets its own batch_size and input size)
    bench kneel_hand_gpu 500 --bundle kneel --config hand --datalist "$hand" --minutes "${KNEEL_MINUTES:-2.5}" \
        --overrides "{$gpu, \"val_interval\": 5}" &
    wait
    ;;
summary)  # one line per run JSON in OUT_DIR
    python - "$out" <<'PY'
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    d = json.loads(p.read_text()); t = d["training"]; v = d["validation"]; lat = d["inference"]["latency"]
    e = d.get("evaluation") or {}
    ev = f"evaluation ({e.get('section', 'validation')}) MRE {(e.get('summary') or {}).get('mre', float('nan')):.3f}, " if e else ""
    print(f"{p.stem}: {t['images_per_s']:.1f} img/s, wait {100 * t['data_wait_fraction']:.1f} %, epochs {t['epochs_run']}, "
          f"{v['key_metric']} {v['metrics'].get(v['key_metric'], float('nan')):.3f} {v['unit']}, {ev}"
          + ", ".join(f"{k} {x['median_ms']:.1f}/{x['p95_ms']:.1f} ms" for k, x in lat.items())
          + f", peak GPU {t.get('peak_gpu_allocated_mb') or 0:.0f} MiB")
PY
    ;;
*)
    echo "unknown phase $phase (throughput | accuracy | bundles)" >&2
    exit 2
    ;;
esac
