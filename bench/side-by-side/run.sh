#!/usr/bin/env bash
# Side by side (issue 5 item 4): mimid's 3-node cluster, NATS JetStream R3 and etcd on this
# machine, one after the other, under the same load, then the ratio table (bench/README.md
# "Side by side").
#
#   bench/side-by-side/run.sh [OUT_DIR]
#
# OUT_DIR (default: a new directory under ${TMPDIR:-/tmp}) gets one JSON report per system
# (mimid.json, mimid-no-fsync.json, nats.json, etcd.json) and compare.json; the table is
# printed at the end. Settings, from the environment:
#   DURATION=10s      timed phase of each system
#   ROOMS=100         rooms (mimid), subjects (NATS), keys (etcd); one sender each
#   CONCURRENCY=100   closed model: operations in flight (ignored when RATE is set)
#   RATE=             open model: operations per second over all senders
#   MESSAGE_BYTES=256
#   SUBSCRIBERS=1     0: no subscribers anywhere (mimid --detached-members, peers
#                     --no-subscribers)
#   NO_FSYNC_ROW=1    0: skip mimid --no-fsync (the like-for-like row against JetStream 2.9,
#                     which does not fsync before its PubAck)
#   DATA_DIR=         parent of every system's temporary data directory
#   BUILD=1           0: use the release mimid-bench as it is
#   BENCH=            the mimid-bench binary (default: ${CARGO_TARGET_DIR:-target}/release/mimid-bench)
# Needs nats-server and etcd (Debian: apt-get install -y nats-server etcd-server).
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION="${DURATION:-10s}"
ROOMS="${ROOMS:-100}"
CONCURRENCY="${CONCURRENCY:-100}"
RATE="${RATE:-}"
MESSAGE_BYTES="${MESSAGE_BYTES:-256}"
SUBSCRIBERS="${SUBSCRIBERS:-1}"
NO_FSYNC_ROW="${NO_FSYNC_ROW:-1}"
BUILD="${BUILD:-1}"
OUT="${1:-$(mktemp -d "${TMPDIR:-/tmp}/mimid-side-by-side-$(date -u +%Y%m%dT%H%M%SZ)-XXXX")}"
mkdir -p "$OUT"

if [ "$BUILD" = 1 ]; then
  cargo build --release --locked -p mimid-bench --bin mimid-bench
fi
BENCH="${BENCH:-${CARGO_TARGET_DIR:-target}/release/mimid-bench}"

load=(--rooms "$ROOMS" --message-bytes "$MESSAGE_BYTES" --duration "$DURATION")
if [ -n "$RATE" ]; then
  load+=(--rate "$RATE")
else
  load+=(--concurrency "$CONCURRENCY")
fi
data=()
if [ -n "${DATA_DIR:-}" ]; then
  data=(--data-dir "$DATA_DIR")
fi
mimid_subs=()
peer_subs=()
if [ "$SUBSCRIBERS" = 0 ]; then
  mimid_subs=(--detached-members)
  peer_subs=(--no-subscribers)
fi

echo "== mimid cluster (3 nodes, fsync on) -> $OUT/mimid.json" >&2
"$BENCH" cluster "${load[@]}" "${data[@]}" "${mimid_subs[@]}" --json "$OUT/mimid.json"
compare=(--mimid "$OUT/mimid.json")
if [ "$NO_FSYNC_ROW" = 1 ]; then
  echo "== mimid cluster (3 nodes, --no-fsync) -> $OUT/mimid-no-fsync.json" >&2
  "$BENCH" cluster "${load[@]}" "${data[@]}" "${mimid_subs[@]}" --no-fsync \
    --json "$OUT/mimid-no-fsync.json"
  compare+=(--mimid-no-fsync "$OUT/mimid-no-fsync.json")
fi
echo "== NATS JetStream (3 nodes, R3 file stream) -> $OUT/nats.json" >&2
"$BENCH" nats "${load[@]}" "${data[@]}" "${peer_subs[@]}" --json "$OUT/nats.json"
echo "== etcd (3 members) -> $OUT/etcd.json" >&2
"$BENCH" etcd "${load[@]}" "${data[@]}" "${peer_subs[@]}" --json "$OUT/etcd.json"

compare+=(--nats "$OUT/nats.json" --etcd "$OUT/etcd.json" --json "$OUT/compare.json")
echo "== comparison -> $OUT/compare.json" >&2
"$BENCH" compare "${compare[@]}"
echo "reports in $OUT" >&2
