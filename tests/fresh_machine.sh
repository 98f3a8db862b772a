#!/bin/sh
# tests/fresh_machine.sh -- the README's set-up on a machine that has nothing:
# a minimal Debian 12 root (debootstrap --variant=minbase, plus git, make and
# ca-certificates, as a new machine or container has them), a clone of this
# checkout's HEAD inside it, and there, as root, the README's two commands,
# each run once: `make test`, then `make demo`.  Either failing fails the check.
#
#   make fresh-check                  (as root; needs debootstrap and the network)
#   FRESH_STEPS=test make fresh-check (only `make test`)
#
# The root is built in build/fresh/ (about 1.5 GB with the packages the
# commands install) and removed at the end unless FRESH_KEEP=1.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
root="$top/build/fresh/root"
steps=${FRESH_STEPS:-"test demo"}
suite=${FRESH_SUITE:-bookworm}
mirror=${FRESH_MIRROR:-http://deb.debian.org/debian}

if [ "$(id -u)" != 0 ]; then echo "fresh_machine.sh: run as root (debootstrap and chroot)" >&2; exit 1; fi
command -v debootstrap >/dev/null || { echo "installing debootstrap"; apt-get install -y -qq debootstrap >/dev/null; }

mounted=""
cleanup() {
  for m in $mounted; do umount -l "$m" 2>/dev/null || true; done
  if [ "${FRESH_KEEP:-0}" != 1 ]; then rm -rf "$top/build/fresh"; fi
}
trap cleanup EXIT INT TERM

rm -rf "$top/build/fresh"
mkdir -p "$root"
echo "fresh_machine: debootstrap $suite (minbase) into $root"
debootstrap --variant=minbase --include=git,make,ca-certificates "$suite" "$root" "$mirror" >"$top/build/fresh/debootstrap.log" 2>&1 ||
  { tail -n 30 "$top/build/fresh/debootstrap.log"; exit 1; }
cp /etc/resolv.conf "$root/etc/resolv.conf"
for m in proc sys dev dev/pts; do
  mount --bind "/$m" "$root/$m"
  mounted="$root/$m $mounted"
done

# The checkout as a user would clone it: committed files only.
git clone -q "$top" "$root/root/lualign"
echo "fresh_machine: cloned $(git rev-parse --short HEAD) into the root"

status=0
for step in $steps; do
  echo "fresh_machine: make $step"
  start=$(date +%s)
  if chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb \
       OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-}" sh -c "cd /root/lualign && make $step" \
       >"$top/build/fresh/make-$step.log" 2>&1; then
    echo "fresh_machine: make $step passed in $(( $(date +%s) - start )) s; last lines:"
    tail -n 3 "$top/build/fresh/make-$step.log"
  else
    echo "fresh_machine: make $step FAILED after $(( $(date +%s) - start )) s; last lines:"
    tail -n 40 "$top/build/fresh/make-$step.log"
    status=1
    break
  fi
done
[ "${FRESH_KEEP:-0}" = 1 ] && echo "fresh_machine: logs and root kept in build/fresh/"
exit $status
