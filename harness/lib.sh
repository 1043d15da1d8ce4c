# shellcheck shell=bash
# Shared helpers for hearth's build and test scripts (harness/, kernel/, rootfs/).
# Source it; it defines functions only (plus HEARTH_CACHE).

HEARTH_CACHE="${HEARTH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth}"

# Progress goes to stderr so that stdout stays machine-readable (paths).
log() { printf '[%s %s] %s\n' "$(date -u +%H:%M:%S)" "${HEARTH_LOG_TAG:-hearth}" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "${HEARTH_LOG_TAG:-hearth}" "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root to run: $*"
    fi
}

_apt_updated=0
# ensure_pkgs PKG... : install the Debian packages that are not installed yet.
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    if [ "$_apt_updated" = 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
        _apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
}

# hash_inputs ARG... : short sha256 over the given strings and the contents of those that are files.
hash_inputs() {
    local a
    for a in "$@"; do
        printf '%s\0' "$a"
        if [ -f "$a" ]; then sha256sum "$a" | cut -d' ' -f1; fi
    done | sha256sum | cut -c1-16
}

# publish_cache TMPDIR FINALDIR : atomically move a finished build into the cache.
publish_cache() {
    local tmp="$1" final="$2"
    mkdir -p "$(dirname "$final")"
    if [ -e "$final" ]; then rm -rf "$tmp"; return 0; fi
    mv "$tmp" "$final"
}

# elapsed_since EPOCH_SECONDS : "N s"
elapsed_since() { echo "$(( $(date +%s) - $1 )) s"; }

# is_static ELF : true when the executable needs no program interpreter (static or static-pie).
is_static() {
    local h
    h="$(readelf -l "$1" 2>/dev/null)" || return 1
    ! grep -q 'program interpreter' <<<"$h"
}
