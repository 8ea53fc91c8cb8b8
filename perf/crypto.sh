#!/usr/bin/env bash
# Compares our RC4 with OpenSSL's on 16 KiB blocks, measured in the same run.
# Prints both figures in MB/s (10^6 bytes/s) and `rc4 vs openssl: X.XX`.
# Usage: perf/crypto.sh [seconds per measurement, default 3]
# Criterion figures (ours beside the rc4 crate, dh64, handshakes):
#   cargo bench --bench crypto
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-3}"

if ! command -v openssl >/dev/null 2>&1; then
    echo "openssl is not installed; install it (e.g. apt-get install -y openssl) to compare" >&2
    exit 1
fi

cargo build --release --quiet --example rc4_speed
ours=$(target/release/examples/rc4_speed "$secs")

# RC4 lives in OpenSSL 3's legacy provider. The last line reads
# "rc4  <1000s of bytes per second>k".
line=$(openssl speed -provider legacy -provider default -seconds "$secs" -bytes 16384 rc4 2>/dev/null | tail -n 1)
theirs=$(awk '{ v = $NF; sub(/k$/, "", v); printf "%.2f", v / 1000 }' <<<"$line")
if [[ -z "$theirs" || "$theirs" == "0.00" ]]; then
    echo "could not read openssl's figure from: $line" >&2
    exit 1
fi

echo "ringgate rc4 (16 KiB): $ours MB/s"
echo "openssl  rc4 (16 KiB): $theirs MB/s  ($(openssl version))"
awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "rc4 vs openssl: %.2f\n", a / b }'
