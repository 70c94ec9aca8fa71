#!/usr/bin/env bash
# Installs moefy's Debian package with apt into a fresh minimal Debian 12
# (debootstrap --variant=minbase, nothing else installed) and runs it there
# from a directory outside the package: --version, inspect, and build on the
# bundled demo model. This is the "apt install ./moefy_*.deb on a fresh Debian"
# check; it downloads the base system and moefy's dependencies (a few minutes),
# so it is run by hand and in the release checklist, not by ctest
# (scripts/check-deb.sh is the quick check ctest runs).
#   usage (root): scripts/check-deb-fresh.sh BUILD_DIR [MIRROR]
set -euo pipefail
build=$(cd "${1:?usage: check-deb-fresh.sh BUILD_DIR [MIRROR]}" && pwd)
mirror=${2:-http://deb.debian.org/debian}
[[ $(id -u) == 0 ]] || { echo "check-deb-fresh: needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || apt-get install -y debootstrap
scratch=$(mktemp -d /var/tmp/moefy-fresh-XXXXXX)
root=$scratch/root
cleanup() { umount -l "$root/proc" 2>/dev/null || true; rm -rf "$scratch"; }
trap cleanup EXIT
die() { echo "check-deb-fresh: $*" >&2; exit 1; }

(cd "$scratch" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$scratch/pkg" >"$scratch/cpack.log" 2>&1) ||
  { cat "$scratch/cpack.log" >&2; die "cpack -G DEB failed"; }
deb=$(ls "$scratch"/pkg/moefy_*_amd64.deb | head -1)
echo "check-deb-fresh: built $(basename "$deb")"

t0=$(date +%s)
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$scratch/debootstrap.log" 2>&1 ||
  { tail -20 "$scratch/debootstrap.log" >&2; die "debootstrap failed"; }
echo "check-deb-fresh: fresh Debian 12 (minbase) in $(( $(date +%s) - t0 )) s, $(chroot "$root" dpkg-query -W | wc -l) packages"
cp "$deb" "$root/tmp/"
mount -t proc proc "$root/proc"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root DEBIAN_FRONTEND=noninteractive "$@"; }
in_root apt-get update -q >/dev/null
in_root apt-get install -y -q "/tmp/$(basename "$deb")" >"$scratch/apt.log" 2>&1 ||
  { tail -30 "$scratch/apt.log" >&2; die "apt-get install ./$(basename "$deb") failed"; }
echo "check-deb-fresh: apt installed $(basename "$deb") and $(grep -c '^Setting up' "$scratch/apt.log") packages"
in_root sh -ec '
  mkdir -p /srv/elsewhere && cd /srv/elsewhere
  command -v moefy
  moefy --version
  moefy inspect /usr/share/moefy/models/tinyllama-demo | head -3
  moefy build --model /usr/share/moefy/models/tinyllama-demo --method random --experts 4 --out moe >build.txt 2>&1 || { cat build.txt; exit 1; }
  tail -3 build.txt
  test -f moe/config.json
' || die "moefy did not run in the fresh system"
echo "check-deb-fresh: ok (apt install of $(basename "$deb") into a fresh Debian 12, build ran from /srv/elsewhere)"
