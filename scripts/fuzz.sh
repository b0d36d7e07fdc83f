#!/usr/bin/env bash
# `make fuzz`: the libFuzzer targets in fuzz/ (cargo-fuzz). First every kept regression input
# (fuzz/regressions/<target>) and seed (fuzz/seeds/<target>) is run once, then each target is
# fuzzed for FUZZ_SECONDS (default 60), growing fuzz/corpus/<target> (not committed).
# A crash stops the run non-zero; libFuzzer leaves the input in fuzz/artifacts/<target>/: fix the
# bug, then keep the input as fuzz/regressions/<target>/<name> (see docs/security.md, "Fuzzing").
#   FUZZ_TARGETS="virtio_mmio"  FUZZ_SECONDS=600  scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
read -r -a targets <<< "${FUZZ_TARGETS:-virtio_mmio hybrid_vsock agent_messages}"
cargo_fuzz=$(scripts/deps.sh --cargo-fuzz)

# Only the stable toolchain is installed; cargo-fuzz's -Z flags (sanitizer, coverage
# instrumentation) are accepted by stable rustc with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
# The hybrid_vsock target's listening socket lives in a per-process temp dir that a fuzzer
# process, ending through libFuzzer's exit, cannot remove itself.
trap 'rm -rf "${TMPDIR:-/tmp}"/myvm-fuzz-hv-*' EXIT
sanitizer=address
if ! compgen -G "$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/lib/librustc-*_rt.asan.a" >/dev/null; then
    echo "fuzz: this toolchain ships no AddressSanitizer runtime; fuzzing without a sanitizer" >&2
    sanitizer=none
fi
# Debug assertions on: integer overflow and the like in our code are crashes too.
flags=(--sanitizer "$sanitizer" --debug-assertions)
# -timeout: one input taking longer is a hang (a crash); -rss_limit_mb: so is a memory blow-up.
libfuzzer=(-timeout=10 -rss_limit_mb=2048)

for t in "${targets[@]}"; do
    mkdir -p "fuzz/regressions/$t" "fuzz/seeds/$t" "fuzz/corpus/$t"
    echo "== fuzz $t: replaying regressions and seeds" >&2
    "$cargo_fuzz" run "${flags[@]}" "$t" "fuzz/regressions/$t" "fuzz/seeds/$t" -- \
        "${libfuzzer[@]}" -runs=0
done
for t in "${targets[@]}"; do
    echo "== fuzz $t: ${seconds}s" >&2
    "$cargo_fuzz" run "${flags[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" "fuzz/regressions/$t" -- \
        "${libfuzzer[@]}" -max_total_time="$seconds" -print_final_stats=1
done
echo "fuzz: ${targets[*]}: no crash (${seconds}s each)" >&2
