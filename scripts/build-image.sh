#!/usr/bin/env bash
# Builds the taskmill image without pulling anything: statically linked release binaries in a
# FROM scratch image (docker/Dockerfile). For machines that reach a registry, the root
# Dockerfile gives the equivalent Debian-based image with `docker build -t taskmill:latest .`.
#
#   scripts/build-image.sh                          # tags taskmill:latest
#   TASKMILL_IMAGE=taskmill:dev scripts/build-image.sh
#
# Environment:
#   TASKMILL_IMAGE        image name and tag (default taskmill:latest)
#   CARGO_TARGET_DIR      where cargo builds (default target/docker, apart from the usual
#                         target/ so a static build never invalidates a normal one)
#   TASKMILL_IMAGE_LABEL  an extra `key=value` label for the image (the compose test marks
#                         the images it builds with it, to remove them afterwards)
#
# Needs cargo with the host's glibc target (the default toolchain) and a Docker engine.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

image="${TASKMILL_IMAGE:-taskmill:latest}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/docker}"
host="$(rustc -vV | sed -n 's/^host: //p')"
case "$host" in
*-linux-gnu) ;;
*) echo "build-image.sh: needs a *-linux-gnu host toolchain, this one is $host" >&2; exit 2 ;;
esac

log() { printf '%s build-image: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# An explicit --target keeps build scripts and proc macros dynamically linked; only the
# binaries get the static C runtime. The image's binaries are stripped of the line tables the
# release profile keeps for profiling: they were most of the image's size.
log "cargo build (static, $host) into $CARGO_TARGET_DIR"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    nice -n 10 cargo build --release --locked --target "$host" \
    -p taskmill-master -p taskmill-worker -p taskmill-bench

bin_dir="$CARGO_TARGET_DIR/$host/release"
for bin in taskmill-master taskmill-worker taskmill-bench; do
    desc="$(file -b "$bin_dir/$bin")"
    case "$desc" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) echo "build-image.sh: $bin is not statically linked: $desc" >&2; exit 1 ;;
    esac
    # ldd exits non-zero ("not a dynamic executable") or says "statically linked".
    if deps="$(ldd "$bin_dir/$bin" 2>&1)" && ! grep -q 'statically linked' <<<"$deps"; then
        echo "build-image.sh: $bin needs shared libraries:" >&2
        echo "$deps" >&2
        exit 1
    fi
done
log "binaries are static: $(file -b "$bin_dir/taskmill-master" | cut -d, -f1-3)"

# A context of exactly four files and the empty data directory, so nothing else from the work
# tree reaches the engine.
context="$(mktemp -d "$CARGO_TARGET_DIR/image-context.XXXXXX")"
trap 'rm -rf "$context"' EXIT
cp docker/Dockerfile "$bin_dir/taskmill-master" "$bin_dir/taskmill-worker" \
    "$bin_dir/taskmill-bench" "$context/"
mkdir "$context/data"

labels=(--label "org.opencontainers.image.title=taskmill")
if revision="$(git rev-parse HEAD 2>/dev/null)"; then
    labels+=(--label "org.opencontainers.image.revision=$revision")
fi
if [ -n "${TASKMILL_IMAGE_LABEL:-}" ]; then
    labels+=(--label "$TASKMILL_IMAGE_LABEL")
fi
log "docker build -t $image (FROM scratch)"
# --pull=false: scratch is not pulled anyway, and nothing else may be.
docker build --pull=false --force-rm -q "${labels[@]}" -t "$image" "$context" >/dev/null
log "built $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
