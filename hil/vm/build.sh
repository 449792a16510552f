#!/usr/bin/env bash
# Builds (once) the small VM that runs the CAN suite on a kernel with CAN when the host kernel has none:
#   hil/vm/cache/kernel/    vmlinux + the CAN/9p/virtio modules and their load order, from Debian's generic
#                           kernel package (the one linux-image-amd64 depends on; the -cloud flavour has no CAN)
#   hil/vm/cache/initramfs.cpio.gz   busybox + those modules + hil/vm/init.sh as /init
# Each stage writes its COMPLETE stamp last, so a run interrupted half-way is rebuilt, never trusted.
# The initramfs stamp records a hash of its inputs, so editing init.sh rebuilds the initramfs (seconds) but
# not the kernel (which needs the network). `--force` rebuilds both.
# Prints one line per stage and `hil-vm build: ... s` at the end.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="$here/cache"
kdir="$cache/kernel"
# Modules the guest needs; modprobe --show-depends adds their dependencies in load order.
MODULES=(virtio_pci 9pnet_virtio 9p can-raw can-bcm can-gw vcan)
DEB_PACKAGES=(qemu-system-x86 busybox-static can-utils kmod cpio xz-utils)

force=0
[ "${1:-}" = "--force" ] && force=1
say() { echo "hil-vm build: $*"; }
t0=$(date +%s)

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9   # two runs at once share one build

# --- Debian tools the build and the runner use -------------------------------------------------------
ensure_packages() {
  local need=()
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  # the initramfs needs the static busybox (the dynamic one has an ELF interpreter the initramfs lacks)
  deb_installed busybox-static || need+=(busybox-static)
  command -v candump >/dev/null || need+=(can-utils)
  command -v depmod >/dev/null || [ -x /sbin/depmod ] || need+=(kmod)
  command -v cpio >/dev/null || need+=(cpio)
  command -v xz >/dev/null || need+=(xz-utils)
  [ -f /usr/share/qemu/qboot.rom ] || need+=(qemu-system-x86)
  if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "hil-vm build: missing packages ${need[*]}; run as root or: apt-get install -y ${DEB_PACKAGES[*]}" >&2; exit 1; }
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    updated=1
  fi
}
deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }
updated=0
ensure_packages
PATH="$PATH:/sbin:/usr/sbin"

# --- stage 1: kernel + modules ------------------------------------------------------------------------
extract_vmlinux() {  # $1 = vmlinuz (bzImage), $2 = output ELF; tries each compressor at each magic offset
  local img="$1" out="$2" magic dec off
  for pair in 'fd377a585a00:xz -dc' '1f8b08:gzip -dc' '28b52ffd:zstd -dc' '425a68:bzip2 -dc' '894c5a4f:lzop -dc' '5d000000:xz --format=lzma -dc' '02214c18:lz4 -dc'; do
    magic="${pair%%:*}"; dec="${pair#*:}"
    command -v "${dec%% *}" >/dev/null || continue
    for off in $(LC_ALL=C grep -aboP "$(echo "$magic" | sed 's/../\\x&/g')" "$img" | cut -d: -f1); do
      tail -c +$((off + 1)) "$img" | $dec > "$out" 2>/dev/null || true
      if [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' ')" = "7f454c46" ]; then return 0; fi
    done
  done
  return 1
}

build_kernel() {
  local tmp pkg ver deb root
  rm -rf "$kdir" "$cache"/.kernel.*
  tmp="$(mktemp -d "$cache/.kernel.XXXXXX")"
  # Old kernel packages leave the mirror: always refresh the lists before asking which one is current.
  [ "$updated" -eq 1 ] || { say "apt-get update"; apt-get update -qq; }
  pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)"
  [ -n "$pkg" ] || { echo "hil-vm build: cannot tell which kernel linux-image-amd64 depends on" >&2; exit 1; }
  case "$pkg" in *cloud*) echo "hil-vm build: $pkg is the cloud flavour (no CAN)" >&2; exit 1;; esac
  say "downloading $pkg"
  (cd "$tmp" && apt-get download "$pkg" 2>&1 | grep -v 'unsandboxed' || true)
  deb="$(ls "$tmp"/"$pkg"_*.deb 2>/dev/null | head -1)"
  [ -n "$deb" ] || { echo "hil-vm build: apt-get download $pkg gave no .deb" >&2; exit 1; }
  root="$tmp/root"
  dpkg-deb -x "$deb" "$root"
  ver="$(ls "$root/lib/modules" | head -1)"
  say "kernel $ver: extracting vmlinux"
  # The guest would spend ~7 s of emulated CPU decompressing a bzImage; boot the ELF directly (PVH entry).
  extract_vmlinux "$root/boot/vmlinuz-$ver" "$tmp/vmlinux" || { echo "hil-vm build: no vmlinux found in vmlinuz-$ver" >&2; exit 1; }
  depmod -b "$root" "$ver"
  mkdir -p "$tmp/modules"
  : > "$tmp/modules.order"
  local m line ko base
  for m in "${MODULES[@]}"; do
    modprobe -d "$root" -S "$ver" --show-depends "$m" > "$tmp/deps" || { echo "hil-vm build: module $m not in $pkg" >&2; exit 1; }
    while read -r line; do
      case "$line" in
        insmod\ *)
          ko="$(echo "$line" | awk '{print $2}')"; base="$(basename "$ko")"
          case "$base" in *.ko.xz) xz -dc "$ko" > "$tmp/modules/${base%.xz}"; base="${base%.xz}";;
                          *.ko.zst) zstd -dqc "$ko" > "$tmp/modules/${base%.zst}"; base="${base%.zst}";;
                          *) cp "$ko" "$tmp/modules/$base";; esac
          grep -qx "$base" "$tmp/modules.order" || echo "$base" >> "$tmp/modules.order";;
        builtin\ *) ;;
        *) echo "hil-vm build: unexpected modprobe line: $line" >&2; exit 1;;
      esac
    done < "$tmp/deps"
  done
  rm -rf "$root" "$deb" "$tmp/deps"
  echo "$pkg $ver" > "$tmp/version"
  chmod 755 "$tmp"
  mv "$tmp" "$kdir"
  echo "$pkg $ver" > "$kdir/COMPLETE"   # last: only a finished kernel stage has it
  say "kernel stage done ($(wc -l < "$kdir/modules.order") modules: $(tr '\n' ' ' < "$kdir/modules.order"))"
}

# --- stage 2: initramfs ----------------------------------------------------------------------------------
initramfs_inputs() { cat "$kdir/COMPLETE" "$here/init.sh" "$here/build.sh"; sha256sum /bin/busybox | cut -d' ' -f1; }

build_initramfs() {
  local tmp
  rm -f "$cache/initramfs.COMPLETE" "$cache"/.initramfs.*
  tmp="$(mktemp -d "$cache/.initramfs.XXXXXX")"
  mkdir -p "$tmp/root"/{bin,sbin,proc,sys,dev,host,lib/modules,tmp}
  cp /bin/busybox "$tmp/root/bin/busybox"
  cp "$here/init.sh" "$tmp/root/init"
  chmod 755 "$tmp/root/init" "$tmp/root/bin/busybox"
  cp "$kdir"/modules/*.ko "$tmp/root/lib/modules/"
  cp "$kdir/modules.order" "$tmp/root/lib/modules/order"
  (cd "$tmp/root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$tmp/initramfs.cpio.gz"
  mv "$tmp/initramfs.cpio.gz" "$cache/initramfs.cpio.gz"
  rm -rf "$tmp"
  initramfs_inputs | sha256sum | cut -d' ' -f1 > "$cache/initramfs.COMPLETE"   # last
  say "initramfs stage done ($(du -k "$cache/initramfs.cpio.gz" | cut -f1) KiB)"
}

if [ "$force" -eq 1 ] || [ ! -f "$kdir/COMPLETE" ] || [ ! -s "$kdir/vmlinux" ]; then
  build_kernel
else
  say "kernel cached ($(cat "$kdir/COMPLETE"))"
fi
if [ "$force" -eq 1 ] || [ ! -f "$cache/initramfs.COMPLETE" ] || [ ! -s "$cache/initramfs.cpio.gz" ] \
   || [ "$(initramfs_inputs | sha256sum | cut -d' ' -f1)" != "$(cat "$cache/initramfs.COMPLETE")" ]; then
  build_initramfs
else
  say "initramfs cached"
fi
say "ready in $(( $(date +%s) - t0 )) s"
