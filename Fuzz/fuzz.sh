#!/usr/bin/env bash
# Builds and runs the libFuzzer targets of Fuzz/ (see README.md, "Fuzzing").
#
#   Fuzz/fuzz.sh build                    release build with -sanitize=fuzzer,address into Fuzz/.build
#   Fuzz/fuzz.sh run TARGET [libFuzzer options...]
#
# TARGET is mqtt, websocket, jsonapi or config. A run starts from the checked-in seeds
# (Fuzz/Corpus/TARGET) and every input that once broke something (Fuzz/Regressions/TARGET), and keeps
# what it learns in Fuzz/.build/corpus/TARGET (not checked in). A crash is written to
# Fuzz/.build/crashes/, the run fails, and the input belongs in Fuzz/Regressions/TARGET plus a unit test.
# Leak checking is off by default: NIO's and the runtime's caches make LeakSanitizer scan after nearly
# every input (10-20x slower) without reporting anything; FUZZ_LEAKS=1 turns it on.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
swift=${SWIFT:-swift}

target_product() {
    case "$1" in
        mqtt) echo FuzzMQTT ;;
        websocket) echo FuzzWebSocket ;;
        jsonapi) echo FuzzJSONAPI ;;
        config) echo FuzzConfig ;;
        *) echo "unknown fuzz target '$1' (mqtt, websocket, jsonapi, config)" >&2; exit 2 ;;
    esac
}

# Inputs larger than this are not worth mutating: every parser is exercised by small inputs, and
# large ones only slow the run down.
target_max_len() {
    case "$1" in
        mqtt|jsonapi) echo 4096 ;;
        websocket|config) echo 8192 ;;
    esac
}

case "${1:-}" in
build)
    # -enable-testing: the targets reach internal parser types with @testable import.
    # The C parts (llhttp, libyaml) get coverage instrumentation too.
    "$swift" build --package-path "$here" -c release \
        -Xswiftc -enable-testing -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING \
        -Xcc -fsanitize=fuzzer-no-link,address 2>&1 | grep -v "ld.gold: warning: Cannot export local symbol"
    ;;
run)
    target=${2:?usage: fuzz.sh run TARGET [libFuzzer options...]}
    shift 2
    product=$(target_product "$target")
    binary="$here/.build/release/$product"
    [ -x "$binary" ] || { echo "$binary is missing: run 'Fuzz/fuzz.sh build' first" >&2; exit 2; }
    work="$here/.build/corpus/$target"
    crashes="$here/.build/crashes"
    mkdir -p "$work" "$crashes" "$here/Regressions/$target"
    leaks=0
    [ "${FUZZ_LEAKS:-0}" = 1 ] && leaks=1
    echo "fuzzing $target ($product) $*"
    log="$here/.build/$target.log"
    status=0
    "$binary" -max_len="$(target_max_len "$target")" -timeout=10 -detect_leaks=$leaks -print_final_stats=1 \
        -artifact_prefix="$crashes/$target-" "$@" \
        "$work" "$here/Corpus/$target" "$here/Regressions/$target" >"$log" 2>&1 || status=$?
    grep -E "^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::(number_of_executed_units|peak_rss_mb)|==[0-9]+==ERROR|SUMMARY|Fatal error|.*Test unit written)" "$log" || true
    if [ "$status" != 0 ]; then
        echo "fuzz target $target FAILED (exit $status); log: $log, input: $crashes" >&2
        exit 1
    fi
    ;;
*)
    echo "usage: fuzz.sh build | run TARGET [libFuzzer options...]" >&2
    exit 2
    ;;
esac
