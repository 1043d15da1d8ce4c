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

# hash_inputs ARG... : short sha256 over the given strings; an argument naming a file counts as
# its base name and contents (not its full path, so clones in other places share the cache).
hash_inputs() {
    local a
    for a in "$@"; do
        if [ -f "$a" ]; then printf 'file:%s\0' "$(basename "$a")"; sha256sum <"$a" | cut -d' ' -f1
        else printf '%s\0' "$a"; fi
    done | sha256sum | cut -c1-16
}

# lock_script NAME "$0" "$@" : re-runs the calling script under an exclusive lock on
# $HEARTH_CACHE/NAME.lock (once), so two runs (other developers' tests, parallel CI steps) never
# build into the same cache directory at the same time. Call it before touching the cache.
lock_script() {
    local name="$1" var="HEARTH_LOCKED_${1//[^A-Za-z0-9]/_}"; shift
    [ -n "${!var:-}" ] && return 0
    mkdir -p "$HEARTH_CACHE"
    exec env "$var=1" flock -x "$HEARTH_CACHE/$name.lock" "$@"
}

# publish_cache TMPDIR FINALDIR : atomically move a finished build into the cache.
publish_cache() {
    local tmp="$1" final="$2"
    mkdir -p "$(dirname "$final")"
    if [ -e "$final" ]; then rm -rf "$tmp"; return 0; fi
    mv "$tmp" "$final"
}

# When run-in-svm.sh failed because the outer machine itself failed (harness infrastructure,
# worth a run in a new machine), prints how ("crashed": its kernel panicked; "froze": its
# heartbeat stopped) and returns 0; returns 1 for any other status (the program's own, a time
# limit, a harness set-up error). $1: run-in-svm.sh's status, $2: a file holding its output.
outer_machine_failure() {
    if [ "$1" = 125 ] && grep -aq 'the outer machine stopped' "$2" && grep -aq 'Kernel panic' "$2"; then
        echo crashed
    elif [ "$1" = 124 ] && grep -aq 'the outer machine made no progress' "$2"; then
        echo froze
    else
        return 1
    fi
}

# elapsed_since EPOCH_SECONDS : "N s"
elapsed_since() { echo "$(( $(date +%s) - $1 )) s"; }

# is_static ELF : true when the executable needs no program interpreter (static or static-pie).
is_static() {
    local h
    h="$(readelf -l "$1" 2>/dev/null)" || return 1
    ! grep -q 'program interpreter' <<<"$h"
}

# prune_cache DIR PREFIX KEEP : keep the KEEP most recently built DIR/PREFIX* entries, remove the rest.
prune_cache() {
    local dir="$1" prefix="$2" keep="$3" old
    [ -d "$dir" ] || return 0
    # shellcheck disable=SC2012 # names are ours: [a-z0-9-] only
    ls -1dt "$dir/$prefix"* 2>/dev/null | tail -n +"$((keep + 1))" | while read -r old; do
        log "pruning old cache entry $old"
        rm -rf "$old"
    done
}
