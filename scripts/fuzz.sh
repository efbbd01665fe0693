#!/usr/bin/env bash
# The fuzz targets (one fuzz crate beside each crate: dataplane, state, control, bgp).
#
#   bash scripts/fuzz.sh replay          build every fuzz crate, run each target once over its
#                                        committed corpus and seeds (-runs=0): what CI runs
#   bash scripts/fuzz.sh run TARGET [RUNS] [libFuzzer flags...]
#                                        a campaign on one core (default 10M executions) into
#                                        the target's corpus; its final lines are the figures
#                                        of bench/RESULTS.md
#   bash scripts/fuzz.sh cmin TARGET     minimise the target's corpus (seeds stay apart)
#
# All crates build into one target directory (target/fuzz, shared dependencies) without a
# sanitizer (`-s none`: the code under test has no unsafe; panics and assertions abort) and with
# debug assertions (overflow checks), the same build for CI and for campaigns.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/fuzz
BIN=$OUT/x86_64-unknown-linux-gnu/release

# target → its crate
declare -A CRATE=(
  [parse]=dataplane [pipeline]=dataplane [snapshot]=dataplane
  [load]=state [request]=control [decode]=bgp [session]=bgp
)
ORDER=(parse pipeline snapshot load request decode session)

toolchain=()
rustup toolchain list 2>/dev/null | grep -q '^nightly' && toolchain=(+nightly)

build() { # crate [extra cargo-fuzz flags]
  local crate=$1
  shift
  (cd "$ROOT/$crate" && cargo "${toolchain[@]}" fuzz build -s none -a --target-dir "$OUT" "$@")
}

dirs() { # target → corpus dir (created) and seeds dir (if any)
  local t=$1 c=${CRATE[$1]}
  mkdir -p "$ROOT/$c/fuzz/corpus/$t"
  echo "$ROOT/$c/fuzz/corpus/$t"
  [ -d "$ROOT/$c/fuzz/seeds/$t" ] && echo "$ROOT/$c/fuzz/seeds/$t"
  return 0
}

case "${1:-}" in
  replay)
    start=$(date +%s)
    for c in dataplane state control bgp; do
      echo "fuzz: building $c/fuzz" >&2
      build "$c"
    done
    built=$(date +%s)
    for t in "${ORDER[@]}"; do
      mapfile -t d < <(dirs "$t")
      n=$(find "${d[@]}" -type f | wc -l)
      echo "fuzz: replaying $t ($n inputs)" >&2
      log=$(mktemp)
      if ! "$BIN/$t" -runs=0 "${d[@]}" >"$log" 2>&1; then
        # The panic's message first (a backtrace would push it out of a tail), then the end.
        grep -m1 -A4 "panicked at" "$log" >&2 || true
        tail -12 "$log" >&2
        echo "fuzz: $t crashed on its corpus" >&2
        exit 1
      fi
      grep -E '^(Done|#[0-9]+ +DONE)' "$log" >&2 || true
      rm -f "$log"
    done
    echo "fuzz: built in $((built - start)) s, replayed in $(($(date +%s) - built)) s" >&2
    ;;
  run)
    t=${2:?target}
    runs=${3:-10000000}
    shift 3 || shift $#
    build "${CRATE[$t]}" "$t"
    mkdir -p "$ROOT/${CRATE[$t]}/fuzz/artifacts/$t"
    mapfile -t d < <(dirs "$t")
    nice -n 19 "$BIN/$t" -runs="$runs" -print_final_stats=1 \
      -artifact_prefix="$ROOT/${CRATE[$t]}/fuzz/artifacts/$t/" "$@" "${d[@]}"
    ;;
  cmin)
    t=${2:?target}
    build "${CRATE[$t]}" "$t"
    mapfile -t d < <(dirs "$t")
    tmp=$(mktemp -d)
    # Keep what the seeds do not already cover: merge the corpus into an empty dir, seeds
    # first, on edges only (hit counts and comparisons would keep thousands of files).
    nice -n 19 "$BIN/$t" -merge=1 -use_counters=0 -use_cmp=0 -use_value_profile=0 \
      "$tmp" "${d[@]:1}" "${d[0]}" >/dev/null 2>&1
    if [ "${#d[@]}" -gt 1 ]; then
      for s in "${d[1]}"/*; do
        rm -f "$tmp/$(sha1sum "$s" | cut -d' ' -f1)"
      done
    fi
    # Named inputs (regressions: crash-... renamed by what they found) stay.
    for k in "${d[0]}"/*; do
      case $(basename "$k") in *[!0-9a-f]*) cp "$k" "$tmp/" ;; esac
    done
    rm -rf "${d[0]}"
    mv "$tmp" "${d[0]}"
    echo "fuzz: $t corpus now $(find "${d[0]}" -type f | wc -l) files" >&2
    ;;
  *)
    sed -n '2,16p' "$0" >&2
    exit 2
    ;;
esac
