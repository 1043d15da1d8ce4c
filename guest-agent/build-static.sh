#!/usr/bin/env bash
# Build the hearth guest agent as a static x86_64 binary and print its path.
# Uses the gnu target with crt-static (the musl target is not available here).
# Output: one line, the absolute path of the binary. Build logs go to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target_dir="${HEARTH_AGENT_TARGET_DIR:-${HOME}/.cache/hearth/agent-target}"
export RUSTFLAGS="-C target-feature=+crt-static"
# Profile `agent` (the workspace's Cargo.toml): release, optimized for size, one LTO'd unit.
cargo build --manifest-path "${here}/Cargo.toml" --profile agent --target x86_64-unknown-linux-gnu \
  --target-dir "${target_dir}" --bin hearth-agent 1>&2
bin="${target_dir}/x86_64-unknown-linux-gnu/agent/hearth-agent"
if ! file "${bin}" 2>/dev/null | grep -qE 'statically linked|static-pie linked'; then
  if ldd "${bin}" >/dev/null 2>&1; then
    echo "build-static.sh: ${bin} is not statically linked" >&2
    exit 1
  fi
fi
echo "${bin}"
