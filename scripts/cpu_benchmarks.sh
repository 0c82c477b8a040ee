#!/usr/bin/env bash
# The CPU recipes (each bundle's configs/cpu.json: 15 minutes of training on 2 CPU cores) measured on the shared data,
# one run at a time (CPU timings and time budgets are only comparable when nothing else runs), figures on the test split:
#
#   bash scripts/cpu_benchmarks.sh datalists          # data/hand_xray/datalist.json (79/11/22), its 3 folds, data/spine_aasce/datalist.json
#   bash scripts/cpu_benchmarks.sh scn      [OUT]     # SCN cpu.json on the hand set
#   bash scripts/cpu_benchmarks.sh bundles  [OUT]     # adv_posenet, interactive_kp, kneel cpu.json on the hand set, interactive_kp on AASCE
#   bash scripts/cpu_benchmarks.sh adv_posenet|interactive_kp|kneel|interactive_kp_spine [OUT]   # one of those runs
#   bash scripts/cpu_benchmarks.sh scn_cv   [OUT]     # 3-fold cross-validation of SCN cpu.json on the hand set, pooled test errors
#   bash scripts/cpu_benchmarks.sh interactive_kp_spine_45 [OUT]   # interactive_kp cpu.json on AASCE with 45 minutes
#                                                     # (the interactive issue's budget), MRE vs clicks on the test split
#   bash scripts/cpu_benchmarks.sh kneel_comparison [OUT]   # KNEEL on the hand set, CPU recipe: single stage (15 min) vs
#                                                     # stage 1 alone vs two stages (7.5 + 7.5) vs stage 2 from scratch
#   bash scripts/cpu_benchmarks.sh adv_occlusion [OUT]   # adv_posenet cpu.json on the hand set, adversarial vs supervised
#                                                     # (15 min each), then the occlusion study of both on the test split
#   bash scripts/cpu_benchmarks.sh regions [OUT]      # conformal regions: interactive_kp cpu.json on AASCE, then
#                                                     # calibration + test coverage of it and of adv_occlusion's two models
#
# OUT defaults to runs/bench (runs/cv for scn_cv). Every run uses the bundles' default seed (0). The time budget is the
# recipe's own (max_minutes 15, TimeBudget: whole epochs while the next fits, validation included); --minutes 16 is a
# safety stop of the harness. Each benchmark run writes OUT/<name>.json and .log; the report: scripts/benchmark.py report.
set -u
phase=${1:?phase: datalists | scn | bundles | adv_posenet | interactive_kp | kneel | interactive_kp_spine | interactive_kp_spine_45 | kneel_comparison | scn_cv | adv_occlusion | regions}
hand=${HAND:-data/hand_xray/datalist.json}
spine=${SPINE:-data/spine_aasce/datalist.json}

bench() {  # bench NAME ARGS...: one benchmark run of a bundle's cpu.json, evaluated on the datalist's test split
    local name=$1
    shift
    python scripts/benchmark.py run --out "$out/$name.json" --epochs 100000 --minutes 16 --section test \
        --latency_images 22 --warmup 2 --latency_devices cpu "$@" >"$out/$name.log" 2>&1
    echo "$name: exit $? ($(date -u +%T))"
}

case "$phase" in
datalists)
    python scripts/prepare_datalist.py shared --dataset hand_xray --out "$hand"
    python scripts/prepare_datalist.py shared --dataset hand_xray --out "$hand" --folds 3
    python scripts/prepare_datalist.py shared --dataset spine_aasce --out "$spine"
    ;;
scn)
    out=${2:-runs/bench}; mkdir -p "$out"
    bench scn_hand_cpu --bundle scn --datalist "$hand" --config cpu
    ;;
adv_posenet | interactive_kp | kneel | interactive_kp_spine | bundles)
    out=${2:-runs/bench}; mkdir -p "$out"
    case "$phase" in adv_posenet | bundles)
        bench adv_posenet_hand_cpu --bundle adv_posenet --datalist "$hand" --config hand,cpu ;; esac
    case "$phase" in interactive_kp | bundles)  # cpu.json's canvas is the spine's (1:2); the hand's is 2:3
        bench interactive_kp_hand_cpu --bundle interactive_kp --datalist "$hand" --config hand,cpu \
            --overrides '{"spatial_size": [128, 192]}' ;; esac
    case "$phase" in kneel | bundles)
        bench kneel_hand_cpu --bundle kneel --datalist "$hand" --config hand,cpu ;; esac
    case "$phase" in interactive_kp_spine | bundles)
        bench interactive_kp_spine_cpu --bundle interactive_kp --datalist "$spine" --config cpu ;; esac
    ;;
interactive_kp_spine_45)
    out=${2:-runs/bench}; mkdir -p "$out"
    python scripts/benchmark.py run --out "$out/interactive_kp_spine_cpu45.json" --epochs 100000 --minutes 46 --section test \
        --latency_images 22 --warmup 2 --latency_devices cpu --bundle interactive_kp --datalist "$spine" --config cpu \
        --overrides '{"max_minutes": 45}' >"$out/interactive_kp_spine_cpu45.log" 2>&1
    echo "interactive_kp_spine_45: exit $? ($(date -u +%T))"
    ;;
kneel_comparison)
    out=${2:-runs}; mkdir -p "$out"
    python scripts/kneel_comparison.py --out_dir "$out/kneel_hand_cpu" --datalist "$hand" --variants hand,cpu \
        --minutes 7.5 --scratch True >"$out/kneel_hand_cpu.log" 2>&1
    echo "kneel_comparison: exit $? ($(date -u +%T))"
    ;;
adv_occlusion)
    out=${2:-runs}; mkdir -p "$out/adv_hand_cpu" "$out/bench"
    for arm in adv sup; do
        adv=$([ $arm = adv ] && echo true || echo false)
        name=adv_posenet_hand_cpu$([ $arm = sup ] && echo _supervised)
        python scripts/benchmark.py run --out "$out/bench/$name.json" --epochs 100000 --minutes 16 \
            --section test --latency_images 22 --warmup 2 --latency_devices cpu --bundle adv_posenet --datalist "$hand" \
            --config hand,cpu --workdir "$out/adv_hand_cpu/$arm" --overrides "{\"adversarial\": \"$adv\"}" \
            >"$out/adv_hand_cpu/$arm.log" 2>&1
        echo "adv_occlusion $arm: exit $? ($(date -u +%T))"
    done
    python scripts/occlusion_study.py --datalist "$hand" --adversarial_ckpt "$out/adv_hand_cpu/adv/models/model.pt" \
        --supervised_ckpt "$out/adv_hand_cpu/sup/models/model.pt" --output_dir "$out/adv_hand_cpu/occlusion" --section test \
        --occlusion_blob_size_mm "[10,15]" >"$out/adv_hand_cpu/occlusion.log" 2>&1
    echo "adv_occlusion study: exit $? ($(date -u +%T))"
    ;;
regions)
    out=${2:-runs}; mkdir -p "$out/uq" "$out/bench"
    python scripts/benchmark.py run --out "$out/bench/interactive_kp_spine_cpu.json" --epochs 100000 --minutes 16 \
        --section test --latency_images 22 --warmup 2 --latency_devices cpu --bundle interactive_kp --datalist "$spine" \
        --config cpu --workdir "$out/uq/spine" >"$out/uq/spine_train.log" 2>&1
    for arm in adv sup; do
        python scripts/calibrate_regions.py --bundle adv_posenet --ckpt "$out/adv_hand_cpu/$arm/models/model.pt" \
            --report_section test --output_dir "$out/uq/hand_$arm" --num_workers 0 >"$out/uq/hand_$arm.log" 2>&1
    done
    python scripts/calibrate_regions.py --bundle interactive_kp --ckpt "$out/uq/spine/models/model.pt" --report_section test \
        --output_dir "$out/uq/spine_regions" --num_workers 0 --num_clicks 0 >"$out/uq/spine_regions.log" 2>&1
    python -m monai.bundle run evaluating --config_file "$(python -m monai_ext config_files bundles/interactive_kp evaluate)" \
        --ckpt_path "$out/uq/spine/models/model.pt" --output_dir "$out/uq/spine_eval" --num_workers 0 >"$out/uq/spine_eval.log" 2>&1
    echo "regions: exit $? ($(date -u +%T))"
    ;;
scn_cv)
    out=${2:-runs/cv}; mkdir -p "$out"
    python scripts/cross_validate.py run --bundle scn --datalists "${hand%.json}_fold*.json" --config cpu \
        --epochs 100000 --minutes 16 --out "$out/scn_hand_cpu" >"$out/scn_hand_cpu.log" 2>&1
    echo "scn_cv: exit $? ($(date -u +%T))"
    ;;
*)
    echo "unknown phase $phase" >&2
    exit 2
    ;;
esac
