#!/usr/bin/env bash
# Regenerates the seed corpora (tests/fuzz/corpus/TARGET/) from a real
# repository made by the built dp420: a local volume backed up twice (full,
# then incremental) and a remote one through `dp420 serve`, whose agent leaves
# its id cache and .seen file. Its files are copied as seeds; the wire seeds
# are written by make_wire_seeds from the same repository. The repository's
# key goes to tests/fuzz/data/hash.key so that seeds pass their seals. Inputs
# named regress-* (kept from findings) are left in place.
#
#   tests/fuzz/make_corpus.sh [DP420] [MAKE_WIRE_SEEDS]
#
# Defaults: build/engine/dp420 and build-asan-ubsan/tests/fuzz/make_wire_seeds
# (scripts/build.sh; scripts/fuzz.sh builds the fuzz tree).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly ROOT
readonly DP420="${1:-${ROOT}/build/engine/dp420}"
readonly WIRE="${2:-${ROOT}/build-asan-ubsan/tests/fuzz/make_wire_seeds}"
readonly OUT="${ROOT}/tests/fuzz/corpus"
# shellcheck source=scripts/lib-e2e.sh
source "${ROOT}/scripts/lib-e2e.sh"

work="$(mktemp -d)"
E2E_SERVER_PID=""
cleanup() {
  [[ -n "${E2E_SERVER_PID}" ]] && kill -TERM "${E2E_SERVER_PID}" 2>/dev/null && wait "${E2E_SERVER_PID}" 2>/dev/null
  rm -rf "${work}"
}
trap cleanup EXIT
export DP420_STATE_DIR="${work}/state" DP420_CACHE_DIR="${work}/cache"

repo="${work}/repo"
"${DP420}" init --encryption none "${repo}" >/dev/null
# 40 KiB: data, a zero block, data; 4 KiB blocks keep packs small.
src="${work}/src.img"
head -c 16384 /dev/urandom >"${src}"
head -c 4096 /dev/zero >>"${src}"
head -c 20480 /dev/urandom >>"${src}"
"${DP420}" backup --repo "${repo}" --volume vm1 --block-size 4096 "${src}" -q >/dev/null
printf 'changed' | dd of="${src}" bs=1 seek=20000 conv=notrunc status=none
"${DP420}" backup --repo "${repo}" --volume vm1 --block-size 4096 "${src}" -q >/dev/null

clients="${work}/clients"
"${DP420}" client-add --clients "${clients}" --client db1 --key-out "${work}/db1.key" >/dev/null
"${DP420}" client-add --clients "${clients}" --client ops --role admin --max-bytes 1G \
  --max-sessions 8 --key-out "${work}/ops.key" >/dev/null
e2e_start_server "${DP420}" "${repo}" "${clients}" "${work}/serve.log"
remote=(--remote "127.0.0.1:${E2E_SERVER_PORT}" --client db1 --key-file "${work}/db1.key")
"${DP420}" backup "${remote[@]}" --volume web --block-size 4096 "${src}" -q >/dev/null
printf 'again' | dd of="${src}" bs=1 seek=100 conv=notrunc status=none
"${DP420}" backup "${remote[@]}" --volume web --block-size 4096 "${src}" -q >/dev/null
kill -TERM "${E2E_SERVER_PID}" && wait "${E2E_SERVER_PID}" 2>/dev/null || true
E2E_SERVER_PID=""

# Inputs kept from findings (regress-*) stay, and so do fuzz_codec's seeds (a zstd frame,
# an LZ4 block and a plain record, made by hand: a repository holds no compressed block).
[[ -d "${OUT}" ]] && find "${OUT}" -type f ! -name 'regress-*' ! -path '*/fuzz_codec/*' -delete
mkdir -p "${OUT}"/{fuzz_manifest,fuzz_head,fuzz_config,fuzz_clients,fuzz_pack,fuzz_id_cache,fuzz_table}
mkdir -p "${ROOT}/tests/fuzz/data"
cp "${repo}/keys/hash.key" "${ROOT}/tests/fuzz/data/hash.key"
cp "${repo}/config" "${OUT}/fuzz_config/config"
cp "${repo}/config" "${OUT}/fuzz_manifest/config"
cp "${clients}" "${OUT}/fuzz_manifest/clients"
cp "${clients}" "${OUT}/fuzz_clients/clients"
for head in $(find "${repo}/snapshots" -name HEAD); do
  dir="$(dirname "${head}")"
  name="$(basename "${dir}")"
  for m in "${dir}"/*.manifest; do
    cp "${m}" "${OUT}/fuzz_manifest/${name}-$(basename "${m}")"
  done
  cp "${head}" "${OUT}/fuzz_head/HEAD-${name}"
done
for a in "${DP420_STATE_DIR}"/repos/*/*; do cp "${a}" "${OUT}/fuzz_head/anchor-$(basename "${a}")"; done
i=0
for p in "${repo}/packs"/*.pack; do
  cp "${p}" "${OUT}/fuzz_pack/pack-${i}"
  i=$((i + 1))
done
for f in $(find "${DP420_CACHE_DIR}" -name '*.ids' -o -name '*.seen'); do
  cp "${f}" "${OUT}/fuzz_id_cache/$(basename "${f}")"
done
# Table seeds: geometry (block size 4 KiB, the volume's size, page 0), then a
# leaf page's entries as stored in a pack (the last 16 KiB record before the index).
for p in "${OUT}"/fuzz_pack/pack-*; do
  python3 - "${p}" "${OUT}/fuzz_table/$(basename "${p}")" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
magic, ver, pid, index_off, count = struct.unpack_from("<8sIIQI", data, len(data) - 64)
refs = [struct.unpack_from("<32sIIIHH", data, index_off + 48 * i) for i in range(count)]
pages = [r for r in refs if r[4] & 0x6]  # flags: table leaf or inner
geometry = struct.pack("<BQQ", 0, 40960, 0)
with open(sys.argv[2], "wb") as out:
    out.write(geometry)
    for r in pages[:1]:
        off = r[2] * 4096
        out.write(data[off:off + r[3]])
PY
done
"${WIRE}" "${repo}" vm1 "${OUT}"
find "${OUT}" -type f | wc -l | xargs printf 'make_corpus: %s seeds in %s\n' >&2
du -sh "${OUT}" >&2
