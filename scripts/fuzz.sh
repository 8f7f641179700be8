#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (the protocol's frame decoding, both sides of the handshake,
# and the Python listener's pickle scanner; see fuzz/README.md) for SECONDS_PER_TARGET seconds
# each (default 60), then prints one line per target:
#
#   fuzz: <target> <N> execs, <K> crashes
#
# and exits non-zero if any target crashed (panic, hang, out of memory) or could not run.
# CI runs it briefly (`scripts/fuzz.sh 20`); run it for longer by hand (`scripts/fuzz.sh 1800`).
#
# How it fuzzes, best first:
#   1. nightly toolchain present: cargo-fuzz (libFuzzer, coverage-guided) with AddressSanitizer.
#   2. stable only (or the nightly build fails): cargo-fuzz with `--sanitizer none`, which needs
#      no nightly feature. Still libFuzzer and still coverage-guided; only the sanitizer is
#      missing, which matters little for this code (safe Rust, no unsafe of its own).
#   3. cargo-fuzz cannot be installed or cannot build: replays the committed corpus through the
#      same target functions as a plain test, then mutates it at random for the same time with
#      no coverage feedback. Much weaker; said loudly.
#
# cargo-fuzz is installed with `cargo install` when missing. New corpus entries go to
# fuzz/target/corpus/<target> (ignored by git, kept between runs so long runs build on each
# other); the committed seeds in fuzz/corpus/<target> are read, never written. Crash inputs
# land in fuzz/artifacts/<target>/ (ignored by git): minimise one with
# `cargo fuzz tmin <target> <file>` and, once fixed, commit it to fuzz/corpus/<target>/.
#
# Environment (optional):
#   FUZZ_TOOLCHAIN=stable    do not use nightly even if it is installed
#   FUZZ_TARGETS="a b"       run only these targets
#   FUZZ_BLIND=1             skip cargo-fuzz and use the blind fallback (3.)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

secs=${1:-60}
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi
read -ra targets <<<"${FUZZ_TARGETS:-decode_frames master_handshake client_handshake python_pickle}"

say() { printf 'fuzz.sh: %s\n' "$*"; }

# The blind fallback: a plain `cargo test` of the fuzz crate, on whatever toolchain is default.
blind() {
    say "FALLBACK: no libFuzzer ($1). Replaying the committed corpus, then mutating it at"
    say "random for ${secs}s per target WITHOUT coverage feedback: far weaker than cargo-fuzz."
    local only=() out status=0
    [ -n "${FUZZ_TARGETS:-}" ] && [ "${#targets[@]}" -eq 1 ] && only=(FUZZ_TARGET="${targets[0]}")
    # --no-default-features: leaves out libfuzzer-sys, so no C++ build is needed here.
    (cd fuzz && cargo test --release --no-default-features --lib -- every_) || {
        say "the committed corpus fails its targets"
        exit 1
    }
    out=$(mktemp)
    (cd fuzz && env "${only[@]}" FUZZ_SECONDS="$secs" cargo test --release --no-default-features \
        --lib -- --ignored --nocapture blind_fuzz) >"$out" 2>&1 || status=$?
    grep -E '^(fuzz:|crash)' "$out" || tail -n 30 "$out"
    rm -f "$out"
    say "summary ($secs s per target, blind mutation, no coverage feedback)"
    exit "$status"
}

[ "${FUZZ_BLIND:-0}" = 1 ] && blind "FUZZ_BLIND=1"

if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    if ! cargo install cargo-fuzz --locked --version '^0.13'; then
        blind "cargo install cargo-fuzz failed"
    fi
fi
say "$(cargo fuzz --version)"

# Toolchain: nightly with AddressSanitizer when it is there and builds, else stable without a
# sanitizer (still libFuzzer, still coverage-guided), else the blind fallback.
toolchain=()
sanitizer=none
if [ "${FUZZ_TOOLCHAIN:-}" != stable ] && cargo +nightly --version >/dev/null 2>&1; then
    say "libFuzzer via cargo-fuzz, nightly toolchain ($(cargo +nightly --version)), AddressSanitizer"
    if cargo +nightly fuzz build --sanitizer address; then
        toolchain=(+nightly)
        sanitizer=address
    else
        say "the nightly build failed; trying the stable toolchain without a sanitizer"
    fi
else
    say "no nightly toolchain (or FUZZ_TOOLCHAIN=stable): cargo-fuzz on the stable toolchain"
fi
if [ "$sanitizer" = none ]; then
    say "libFuzzer via cargo-fuzz, stable toolchain ($(cargo --version)), no sanitizer:"
    say "coverage-guided all the same; only AddressSanitizer is missing"
    cargo fuzz build --sanitizer none || blind "cargo fuzz build failed"
fi

mkdir -p fuzz/target/logs
failed=0
summary=()
for t in "${targets[@]}"; do
    work="$root/fuzz/target/corpus/$t"
    artifacts="$root/fuzz/artifacts/$t"
    log="$root/fuzz/target/logs/$t.log"
    mkdir -p "$work" "$artifacts"
    stamp=$(mktemp)
    say "$t: ${secs}s (log: fuzz/target/logs/$t.log)"
    status=0
    # -timeout: one input running this long is a hang (the harness itself turns a stuck
    # handshake into a panic at once, on a paused clock). -max_len: frames up to the 4 KiB cap
    # fit whole. -rss_limit_mb: libFuzzer's default, stated.
    cargo "${toolchain[@]}" fuzz run --sanitizer "$sanitizer" "$t" "$work" "$root/fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -max_len=4200 -rss_limit_mb=2048 \
        -dict="$root/fuzz/taskmill.dict" -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
    if [ -z "$execs" ]; then
        execs=$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
    fi
    found=$(find "$artifacts" -type f -newer "$stamp")
    rm -f "$stamp"
    crashes=$(printf '%s' "$found" | grep -c . || true)
    grep -E '^decode_frames: new heap record' "$log" | tail -n 1 || true
    line="fuzz: $t ${execs:-0} execs, $crashes crashes"
    if [ "$status" -ne 0 ]; then
        failed=1
        tail -n 40 "$log"
        [ -n "$found" ] && printf 'fuzz.sh: crash input: %s\n' $found
        [ "$crashes" -eq 0 ] && line="$line (exit status $status, no crash input: see the log)"
    fi
    echo "$line"
    summary+=("$line")
done

say "summary ($secs s per target, sanitizer: $sanitizer)"
printf '%s\n' "${summary[@]}"
exit "$failed"
