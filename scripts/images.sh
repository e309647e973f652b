#!/usr/bin/env bash
# Build the local images the tests and molecule use; no registry is reachable.
#
#   scripts/images.sh [--force]
#
#   local/debian-systemd:bookworm  debootstrap minbase + systemd, CMD /sbin/init (molecule)
#   local/empty:latest             an empty image, for containers that are created, never started
#   local/debian-min:bookworm      the same rootfs, CMD sleep infinity, for containers that run
#   local/debian-slurm:bookworm    the systemd rootfs plus Slurm 22.05, slurmdbd, munge, MariaDB and docker.io
#                                  (molecule/slurm; the container has no network, so nothing installs later)
#
# An image that exists is kept (--force rebuilds). The debootstrap rootfs tarball is kept in
# .cache/images/ so that `docker system prune -a` costs a 5 s import, not a 90 s debootstrap.
# Environment: DEBOOTSTRAP_MIRROR (default: the first Debian URI apt uses, else deb.debian.org).
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

IMAGE_CACHE="$DS01_CACHE/images"
SUITE=bookworm
# python3-venv: ds01_common builds /opt/ds01/venv on the host; logrotate: the role's rule is verified.
INCLUDE=python3,python3-apt,python3-venv,logrotate,systemd,systemd-sysv,dbus,cron,udev,procps,sudo
# gcc + libc6-dev (the molecule host only): ds01_gpu_access compiles the CUDA notice library there.
# libpam-systemd (the molecule host only): logins register with logind, whose sessions notify reads.
HOST_INCLUDE="$INCLUDE,gcc,libc6-dev,libpam-systemd"
# Units that cannot work (or only get in the way) inside a container.
MASKED_UNITS=(
  systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket
  getty.target console-getty.service
)
# The molecule host runs logind (notices reach the terminals of its sessions); the slurm image keeps it masked.
SLURM_MASKED_UNITS=("${MASKED_UNITS[@]}" systemd-logind.service)
# molecule/slurm: a controller, a database and a GPU node in one systemd container, which also runs its own
# dockerd under systemd (Debian's docker.io with what it needs), so that the gateway's deploy and
# playbooks/remove.yml move and restart a real docker.service there.
SLURM_INCLUDE="$INCLUDE,slurm-wlm,slurm-client,slurmdbd,munge,mariadb-server,iproute2,docker.io,containerd,runc,tini,iptables"
# The recipe's fingerprint: a cached tarball or image built from another recipe is rebuilt.
# recipe_of "MASKED UNITS" INCLUDE [MARK...]
recipe_of() {
  local masked="$1"
  shift
  # shellcheck disable=SC2086  # the unit list is split into words on purpose
  printf '%s\n' "$SUITE" "$@" $masked | sha256sum | cut -c1-12
}
RECIPE="$(recipe_of "${MASKED_UNITS[*]}" "$HOST_INCLUDE")"
ROOTFS_TAR="$IMAGE_CACHE/debian-systemd-$SUITE-$RECIPE.tar"
SLURM_RECIPE="$(recipe_of "${SLURM_MASKED_UNITS[*]}" "$SLURM_INCLUDE" keep-log-dirs)"
SLURM_ROOTFS_TAR="$IMAGE_CACHE/debian-slurm-$SUITE-$SLURM_RECIPE.tar"
FORCE=0

debian_mirror() {
  local uri
  if [ -n "${DEBOOTSTRAP_MIRROR:-}" ]; then
    echo "$DEBOOTSTRAP_MIRROR"
    return 0
  fi
  uri="$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' \
    /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1 || true)"
  [ -n "$uri" ] || uri="$(sed -n 's/^deb[[:space:]]\{1,\}\(http[^[:space:]]*\/debian\)[[:space:]]\{1,\}.*/\1/p' \
    /etc/apt/sources.list 2>/dev/null | head -n 1 || true)"
  echo "${uri:-http://deb.debian.org/debian}"
}

# build_rootfs_tar INCLUDE TARBALL "MASKED UNITS": debootstrap a rootfs with systemd (and INCLUDE) into a
# tarball under .cache/images (kept across prunes).
build_rootfs_tar() {
  local include="$1" tarball="$2" masked="$3" rootfs mirror unit
  need_root "debootstrap"
  command -v debootstrap >/dev/null || die "debootstrap not found: run 'make system-deps' first"
  mkdir -p "$IMAGE_CACHE"
  rootfs="$(mktemp -d "$IMAGE_CACHE/rootfs.XXXXXX")"
  chmod 0755 "$rootfs" # mktemp makes it 0700, and the tar's "." becomes the image's "/"
  # shellcheck disable=SC2064  # expand now: the path is fixed
  trap "rm -rf '$rootfs'" EXIT
  mirror="$(debian_mirror)"
  info "debootstrap --variant=minbase $SUITE from $mirror (about 90 s)"
  if ! debootstrap --variant=minbase --include="$include" "$SUITE" "$rootfs" "$mirror" \
    >"$IMAGE_CACHE/debootstrap.log" 2>&1; then
    tail -n 30 "$IMAGE_CACHE/debootstrap.log" >&2
    die "debootstrap failed (full log: $IMAGE_CACHE/debootstrap.log)"
  fi
  for unit in $masked; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
  done
  # No apt caches, package lists or logs in the image (log directories stay: munged, slurmd and
  # mariadb refuse to start without theirs).
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
  find "$rootfs/var/log" -type f -delete
  # A container gets its own hostname and machine-id.
  : >"$rootfs/etc/machine-id"
  tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
  trap - EXIT
  info "rootfs tarball: $tarball ($(du -h "$tarball" | cut -f1))"
}

# import_systemd_image INCLUDE TARBALL RECIPE IMAGE "MASKED UNITS": from the cached tarball (debootstrapped
# when missing).
import_systemd_image() {
  local include="$1" tarball="$2" recipe="$3" image="$4" masked="$5"
  if [ ! -s "$tarball" ] || [ "$FORCE" -eq 1 ]; then
    build_rootfs_tar "$include" "$tarball" "$masked"
  else
    info "reusing cached rootfs $tarball"
  fi
  dk import -c 'ENV container=docker' -c 'CMD ["/sbin/init"]' -c "LABEL ds01.recipe=$recipe" \
    "$tarball" "$image" >/dev/null
}

build_systemd_image() {
  import_systemd_image "$HOST_INCLUDE" "$ROOTFS_TAR" "$RECIPE" "$DS01_IMAGE_SYSTEMD" "${MASKED_UNITS[*]}"
}

build_slurm_image() {
  import_systemd_image "$SLURM_INCLUDE" "$SLURM_ROOTFS_TAR" "$SLURM_RECIPE" "$DS01_IMAGE_SLURM" "${SLURM_MASKED_UNITS[*]}"
}

build_empty_image() {
  tar -c --files-from /dev/null | dk import - "$DS01_IMAGE_EMPTY" >/dev/null
}

# The same layer as the systemd image (no extra space), with a command that just waits:
# tests give it their own command and run it with network_mode none.
build_min_image() {
  local cid
  cid="$(dk create --network none "$DS01_IMAGE_SYSTEMD" /bin/true)"
  dk commit -c 'CMD ["sleep", "infinity"]' "$cid" "$DS01_IMAGE_MIN" >/dev/null
  dk rm "$cid" >/dev/null
}

# Is IMAGE present and built from this recipe? (The min image inherits the label by commit.)
current() {
  local image="$1" want="$2"
  image_exists "$image" || return 1
  [ -z "$want" ] || [ "$(dk image inspect -f '{{index .Config.Labels "ds01.recipe"}}' "$image" 2>/dev/null)" = "$want" ]
}

# ensure IMAGE BUILD_FUNCTION [RECIPE]: build unless present (and of RECIPE), and say how long it took.
ensure() {
  local image="$1" builder="$2" want="${3:-}" start
  if [ "$FORCE" -eq 0 ] && current "$image" "$want"; then
    info "$image: present"
    return 0
  fi
  start="$(now_s)"
  info "$image: building"
  "$builder"
  info "$image: built in $(($(now_s) - start)) s ($(dk image inspect -f '{{.Size}}' "$image" | numfmt --to=iec))"
}

main() {
  case "${1:-}" in
    --force) FORCE=1 ;;
    "") ;;
    *) die "usage: $0 [--force]" ;;
  esac
  log "images: local base images"
  pick_docker_client || die "the Docker engine does not answer: run 'make docker' first"
  ensure "$DS01_IMAGE_SYSTEMD" build_systemd_image "$RECIPE"
  ensure "$DS01_IMAGE_EMPTY" build_empty_image
  # Built from the systemd image: rebuilt whenever that one was rebuilt from another recipe.
  ensure "$DS01_IMAGE_MIN" build_min_image "$RECIPE"
  ensure "$DS01_IMAGE_SLURM" build_slurm_image "$SLURM_RECIPE"
}

main "$@"
