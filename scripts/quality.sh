#!/usr/bin/env bash
# Measures every split method x router x weighting x top-k with `moefy build --json --oracle`
# on the demo model (8 experts, top-1/2/4) and, when ../shared/fixtures/stories260K exists,
# on stories260K (4 experts, top-1/2/3), then writes docs/quality.md with the tables and the
# two target checks.
#
#   bash scripts/quality.sh            # resumable: finished runs are kept in $QDIR and skipped
#   QDIR=/tmp/q EVAL_TOKENS=5000 bash scripts/quality.sh    # a quicker, smaller grid
#
# Needs a built CLI (runs scripts/build.sh when build/moefy is missing) and python3 (stdlib only)
# for the final table. Each finished run is one JSON file; delete $QDIR to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
MOEFY=${MOEFY:-build/moefy}
QDIR=${QDIR:-build/quality}
EVAL_TOKENS=${EVAL_TOKENS:-20000}
CALIB_TOKENS=${CALIB_TOKENS:-32768}
METHODS=${METHODS:-"random cluster graph gradient"}
OUT_DOC=${OUT_DOC:-docs/quality.md}
[ -x "$MOEFY" ] || bash scripts/build.sh
command -v python3 >/dev/null || { echo "quality.sh: python3 is needed to write $OUT_DOC" >&2; exit 1; }
mkdir -p "$QDIR"

# router weighting scale: the reference (random router, softmax x E/k) first, then every
# router x weighting with the scale fitted on calibration text; "fit uniform fit" is the default.
CONFIGS=("random softmax auto" "random softmax fit" "random uniform fit" "centroid softmax fit"
         "centroid uniform fit" "fit softmax fit" "fit uniform fit")

START=$(date +%s)
count_runs() {  # experts-list-length x methods x configs
    echo $(( $1 * $(echo $METHODS | wc -w) * ${#CONFIGS[@]} ))
}
DONE=0
TOTAL=0

run_model() {  # name model_dir experts "k1 k2 ..." calib eval
    local name=$1 model=$2 experts=$3 ks=$4 calib=$5 eval=$6
    local dir=$QDIR/$name
    mkdir -p "$dir"
    echo "{\"name\": \"$name\", \"model\": \"$model\", \"experts\": $experts, \"calib\": \"$calib\", \"eval\": \"$eval\"," \
         "\"eval_tokens\": $EVAL_TOKENS, \"calib_tokens\": $CALIB_TOKENS}" > "$dir/model.json"
    for method in $METHODS; do
        local mdir=$dir/$method plan=$dir/$method/plan.json
        mkdir -p "$mdir"
        if [ ! -f "$plan" ] && [ ! -f "$mdir/unavailable.txt" ]; then
            echo "[$name] split $method ..."
            if ! "$MOEFY" build --model "$model" --method "$method" --experts "$experts" --top-k 1 --router random \
                    --weighting softmax --scale auto --data "$calib" --calib-tokens "$CALIB_TOKENS" \
                    --save-plan "$plan.tmp" --out "$QDIR/tmp-model" --force --json > "$mdir/split.json" 2> "$mdir/split.err"; then
                tail -n 1 "$mdir/split.err" > "$mdir/unavailable.txt"
                echo "[$name] $method unavailable: $(cat "$mdir/unavailable.txt")"
            else
                mv "$plan.tmp" "$plan"
            fi
        fi
        for k in $ks; do
            for cfg in "${CONFIGS[@]}"; do
                DONE=$((DONE + 1))
                [ -f "$plan" ] || continue
                read -r router weighting scale <<< "$cfg"
                local out=$mdir/k$k-$router-$weighting-$scale.json
                [ -f "$out" ] && continue
                "$MOEFY" build --model "$model" --plan "$plan" --top-k "$k" --router "$router" --weighting "$weighting" \
                    --scale "$scale" --data "$calib" --calib-tokens "$CALIB_TOKENS" --eval-data "$eval" \
                    --eval-tokens "$EVAL_TOKENS" --oracle --out "$QDIR/tmp-model" --force --json > "$out.tmp" 2> "$out.err"
                mv "$out.tmp" "$out"
                rm -f "$out.err"
                python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("ppl %.3f (dense %.3f, oracle %.3f) in %.0f s" % (j["moe_ppl"], j["dense_ppl"], j["oracle_ppl"], j["total_seconds"]))' "$out" \
                    | sed "s|^|[$DONE/$TOTAL $(( $(date +%s) - START ))s] $name $method top-$k $router/$weighting/$scale: |"
            done
        done
    done
    rm -rf "$QDIR/tmp-model"
}

SHARED=../shared/fixtures/stories260K
TOTAL=$(count_runs 3)
[ -f "$SHARED/model.safetensors" ] && TOTAL=$((TOTAL + $(count_runs 3)))
run_model demo models/tinyllama-demo 8 "1 2 4" data/calib.jsonl data/eval.jsonl
if [ -f "$SHARED/model.safetensors" ]; then
    run_model stories260K "$SHARED" 4 "1 2 3" "$SHARED/calib.jsonl" "$SHARED/eval.jsonl"
else
    echo "($SHARED not present: stories260K skipped)"
fi

python3 - "$QDIR" "$OUT_DOC" "$METHODS" "$(( $(date +%s) - START ))" <<'PY'
import json, math, os, sys, datetime
qdir, out_doc, methods, elapsed = sys.argv[1], sys.argv[2], sys.argv[3].split(), int(sys.argv[4])
CONFIGS = [("random", "softmax", "auto"), ("random", "softmax", "fit"), ("random", "uniform", "fit"),
           ("centroid", "softmax", "fit"), ("centroid", "uniform", "fit"), ("fit", "softmax", "fit"), ("fit", "uniform", "fit")]
REF, DEFAULT, DEFAULT_METHOD = CONFIGS[0], CONFIGS[-1], "graph"
LABEL = {REF: "random / softmax / E/k (reference)", DEFAULT: "**fit / uniform / fitted (default)**"}

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

models = []
for name in ("demo", "stories260K"):
    m = load(os.path.join(qdir, name, "model.json"))
    if m:
        models.append(m)

def run(m, method, k, cfg):
    return load(os.path.join(qdir, m["name"], method, "k%d-%s-%s-%s.json" % ((k,) + cfg)))

def ks_of(m):
    return [1, 2, 4] if m["name"] == "demo" else [1, 2, 3]

def closed(ref, dflt, orc):
    gap = math.log(ref) - math.log(orc)
    return (math.log(ref) - math.log(dflt)) / gap if gap > 0 else float("nan")

L = []
w = L.append
w("# Measured quality")
w("")
w("Generated by `bash scripts/quality.sh` (%s, %d s on this machine). Every number is a `moefy build --json --oracle` run:" %
  (datetime.date.today().isoformat(), elapsed))
w("perplexity on held-out text (the same tokens for dense, MoE and oracle), after calibrating routers and scales on")
w("separate calibration text. *Oracle* routes each token to the experts with the largest true output norm, with the same")
w("weighting and scale as the model: the best a router can do on that split. Scale *fitted*: per layer, in closed form,")
w("on calibration tokens; *E/k*: the reference LLaMA-MoE's fixed scale.")
w("")

# ---- targets
w("## Targets")
w("")
w("1. The default router (fit, uniform weighting, fitted scale) closes at least 70% of the gap between the reference-style")
w("   random router (softmax weighting, scale E/k) and oracle routing, in log-perplexity, at every top-k:")
w("   closed = (ln ppl_reference − ln ppl_default) / (ln ppl_reference − ln ppl_oracle), oracle of the default configuration.")
w("2. The default configuration with half the FFN active (8 experts, top-4) is within 1.5 × the dense perplexity on the demo model.")
w("")
w("| model | split | top-k | reference ppl | default ppl | oracle ppl | gap closed | target 1 |")
w("|---|---|---|---|---|---|---|---|")
verdicts = []
for m in models:
    for method in methods:
        for k in ks_of(m):
            r, d = run(m, method, k, REF), run(m, method, k, DEFAULT)
            if not r or not d:
                continue
            c = closed(r["moe_ppl"], d["moe_ppl"], d["oracle_ppl"])
            ok = c >= 0.7
            if method == DEFAULT_METHOD:
                verdicts.append(ok)
            w("| %s | %s%s | %d | %.3f | %.3f | %.3f | %.0f%% | %s |" % (m["name"], method, " (default)" if method == DEFAULT_METHOD else "",
              k, r["moe_ppl"], d["moe_ppl"], d["oracle_ppl"], 100 * c, "met" if ok else "**missed**"))
w("")
half = None
for m in models:
    if m["name"] != "demo":
        continue
    d = run(m, DEFAULT_METHOD, 4, DEFAULT)
    if d:
        half = d
if half:
    ratio = half["moe_ppl"] / half["dense_ppl"]
    w("Target 1 (default split, %s): **%s**, met at %d of %d (model, top-k) settings." % (DEFAULT_METHOD,
      "met" if verdicts and all(verdicts) else "missed", sum(verdicts), len(verdicts)))
    w("")
    w("Target 2: default configuration (%s split, 8 experts, top-4, active FFN %.2f) on the demo model: perplexity %.3f vs dense %.3f,"
      % (DEFAULT_METHOD, half["active_ffn_fraction"], half["moe_ppl"], half["dense_ppl"]))
    w("ratio **%.3f** (target ≤ 1.5: **%s**)." % (ratio, "met" if ratio <= 1.5 else "missed"))
    w("")

# ---- tables
for m in models:
    any_run = next((run(m, me, k, c) for me in methods for k in ks_of(m) for c in CONFIGS if run(m, me, k, c)), None)
    if not any_run:
        continue
    w("## %s: %d experts" % (m["name"], m["experts"]))
    w("")
    w("Model `%s`; calibration `%s` (%d tokens at most); evaluation `%s`, %d tokens; dense perplexity **%.3f**." %
      (m["model"], m["calib"], m["calib_tokens"], m["eval"], any_run["eval"]["tokens"], any_run["dense_ppl"]))
    w("")
    for method in methods:
        un = os.path.join(qdir, m["name"], method, "unavailable.txt")
        if os.path.exists(un):
            w("### %s split" % method)
            w("")
            w("Not measured: `%s`" % open(un).read().strip())
            w("")
            continue
        split = load(os.path.join(qdir, m["name"], method, "split.json"))
        w("### %s split%s" % (method, " (%.1f s)" % split["stages"]["split"] if split else ""))
        w("")
        ks = ks_of(m)
        w("Perplexity (FFN error, all layers) per top-k; active FFN fraction " +
          ", ".join("top-%d: %.3f" % (k, (run(m, method, k, DEFAULT) or {}).get("active_ffn_fraction", float("nan"))) for k in ks) + ".")
        w("")
        w("| router / weighting / scale | " + " | ".join("top-%d" % k for k in ks) + " |")
        w("|---|" + "---|" * len(ks))
        for cfg in CONFIGS:
            cells = []
            for k in ks:
                r = run(m, method, k, cfg)
                cells.append("%.3f (%.3f)" % (r["moe_ppl"], r["eval"]["moe"]["ffn_rel_error"]) if r else "–")
            w("| %s | %s |" % (LABEL.get(cfg, " / ".join(cfg)), " | ".join(cells)))
        for cfg, what in ((DEFAULT, "oracle, uniform"), (("fit", "softmax", "fit"), "oracle, softmax (fit router)")):
            cells = []
            for k in ks:
                r = run(m, method, k, cfg)
                cells.append("%.3f (%.3f)" % (r["oracle_ppl"], r["eval"]["oracle"]["ffn_rel_error"]) if r else "–")
            w("| *%s* | %s |" % (what, " | ".join(cells)))
        w("| *dense* | " + " | ".join("%.3f" % any_run["dense_ppl"] for _ in ks) + " |")
        w("")

os.makedirs(os.path.dirname(out_doc) or ".", exist_ok=True)
with open(out_doc + ".tmp", "w") as f:
    f.write("\n".join(L) + "\n")
os.replace(out_doc + ".tmp", out_doc)
print("wrote %s" % out_doc)
PY
