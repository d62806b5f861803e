#!/usr/bin/env bash
# `make test-aarch64`: the torch-free smoke (Fuser().infer on 64×64) of the cminet wheel on the
# CPU a Jetson has, aarch64, under qemu-user emulation; its output must match the host's.
#
# Everything lives under $ROOT (default .stacks/aarch64). Idempotent: each step is skipped when its
# result is already there. Needs root (apt-get), network to PyPI + Debian mirrors. Measured on a
# 2-core x86_64 machine: 67-78 s cold, about 30 s warm. It proves the code and the aarch64 wheels
# run and agree; emulated timings say nothing about a real ARM CPU.
#
#   bash tests/stacks/aarch64.sh            # run (cold or warm)
#   bash tests/stacks/aarch64.sh --clean    # wipe $ROOT first
#
# Layout: src/ = snapshot of $SRC; sysroot/ = Debian 12 arm64 python3.11 unpacked with `dpkg -x` (nothing arm64 is
# installed system-wide); venv/ = aarch64 venv; wheel/ = cminet wheel; pipcache/; out/ = outputs.
set -euo pipefail

SRC=${SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
ROOT=${ROOT:-$SRC/.stacks/aarch64}
HOSTPY=${HOSTPY:-$SRC/.venv/bin/python}
SYSROOT=$ROOT/sysroot
VENV=$ROOT/venv
QEMU=qemu-aarch64-static
export QEMU_LD_PREFIX=$SYSROOT
export PIP_CACHE_DIR=$ROOT/pipcache PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

t0=$(date +%s)
step() { printf '\n== [%3ds] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

if [[ ${1:-} == --clean ]]; then
    step "clean $ROOT"
    rm -rf "$ROOT"
fi
mkdir -p "$ROOT"

# --- 1. host packages: qemu-user-static, arm64 apt lists --------------------------------------
if ! command -v $QEMU >/dev/null; then
    step "apt-get install qemu-user-static"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    step "dpkg --add-architecture arm64 && apt-get update"
    dpkg --add-architecture arm64
    apt-get update -qq
elif [[ -z $(apt-cache policy libc6:arm64 2>/dev/null | awk '/Candidate:/ && $2 != "(none)"') ]]; then
    step "apt-get update (arm64 lists missing)"
    apt-get update -qq
fi
$QEMU --version | head -1

# --- 2. arm64 sysroot: python3.11 + runtime libs, unpacked, not installed ---------------------
ARM_DEBS=(libc6 libgcc-s1 gcc-12-base libstdc++6 libbz2-1.0 libcrypt1 libdb5.3 libexpat1 libffi8
    libgdbm6 liblzma5 libncursesw6 libtinfo6 libnsl2 libtirpc3 libgssapi-krb5-2 libk5crypto3
    libkrb5-3 libkrb5support0 libkeyutils1 libcom-err2 libreadline8 libsqlite3-0 libssl3 libuuid1
    zlib1g libpython3.11-minimal libpython3.11-stdlib python3.11-minimal python3.11 python3.11-venv)
ALL_DEBS=(python3-pip-whl python3-setuptools-whl media-types ca-certificates)
if [[ ! -f $SYSROOT/.done ]]; then
    step "build arm64 sysroot from Debian debs"
    rm -rf "$SYSROOT" "$ROOT/debs"; mkdir -p "$ROOT/debs" "$SYSROOT"
    (cd "$ROOT/debs" && apt-get download -q "${ARM_DEBS[@]/%/:arm64}" "${ALL_DEBS[@]}" 2>&1 | grep -vE "^Get:|unsandboxed as root" || true)
    for f in "$ROOT"/debs/*.deb; do dpkg -x "$f" "$SYSROOT"; done
    # qemu-user shows the guest the HOST's /proc/cpuinfo (x86). onnxruntime's cpuinfo library
    # (aarch64 build) finds no ARM processors in it and segfaults (NULL deref) on import.
    # qemu resolves guest paths under QEMU_LD_PREFIX first, so an arm64-shaped
    # $SYSROOT/proc/cpuinfo is what the guest reads instead (Neoverse-N1 shape, one entry per cpu).
    mkdir -p "$SYSROOT/proc"
    : > "$SYSROOT/proc/cpuinfo"
    for i in $(seq 0 $(( $(nproc --all) - 1 ))); do
        printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i" >> "$SYSROOT/proc/cpuinfo"
    done
    touch "$SYSROOT/.done"
fi
$QEMU "$SYSROOT/usr/bin/python3.11" -c 'import sys, platform; print("guest python", sys.version.split()[0], platform.machine())'

# --- 3. cminet wheel (pure python, built by the host) -----------------------------------------
step "build cminet wheel (from a snapshot of $SRC's working tree)"
# Snapshot = tracked + untracked-not-ignored files, as git sees them. Building from the snapshot
# (not $SRC itself) keeps stale files in $SRC/build/lib out of the wheel and leaves $SRC untouched.
# An edit landing in $SRC while the snapshot is taken can still give a torn wheel: rerun.
rm -rf "$ROOT/src" "$ROOT/wheel"; mkdir -p "$ROOT/src" "$ROOT/wheel"
git -C "$SRC" ls-files -co --exclude-standard -z | (cd "$SRC" && tar --null -T - -cf -) | tar -xf - -C "$ROOT/src"
(cd /tmp && "$HOSTPY" -m pip wheel --no-deps -q -w "$ROOT/wheel" "$ROOT/src" >/dev/null 2>&1) \
    || (cd /tmp && "$HOSTPY" -m pip wheel --no-deps -w "$ROOT/wheel" "$ROOT/src")
WHL=$(ls "$ROOT"/wheel/cminet-*.whl)
echo "$WHL"

# --- 4. aarch64 venv ---------------------------------------------------------------------------
# No binfmt_misc here, so the guest cannot exec aarch64 binaries itself: `venv` (which runs
# ensurepip in a subprocess) is made --without-pip and pip is bootstrapped from Debian's pip wheel.
if [[ ! -x $VENV/bin/python ]] || ! $QEMU "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    step "create aarch64 venv"
    rm -rf "$VENV"
    $QEMU "$SYSROOT/usr/bin/python3.11" -m venv --without-pip "$VENV"
    PIPWHL=$(ls "$SYSROOT"/usr/share/python-wheels/pip-*.whl)
    $QEMU "$VENV/bin/python" "$PIPWHL/pip" install -q --no-index "$PIPWHL"
fi

step "pip install cminet wheel (aarch64, deps from PyPI)"
$QEMU "$VENV/bin/python" -m pip uninstall -q -y cminet 2>/dev/null || true
$QEMU "$VENV/bin/python" -m pip install -q "$WHL" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
$QEMU "$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(cminet|numpy|opencv[a-z-]*|onnxruntime|click|tqdm|protobuf|flatbuffers) '

# --- 5. the smoke, on aarch64 and on the host --------------------------------------------------
mkdir -p "$ROOT/out"
SMOKE="import numpy as np; from cminet.runtime import Fuser; f=Fuser(backend='ort-cpu'); r=np.random.default_rng(0); a=r.random((1,1,64,64),dtype=np.float32); b=r.random((1,1,64,64),dtype=np.float32); y=f.infer(a,b); print(y.shape, float(y.mean()), __import__('platform').machine())"
step "smoke on aarch64 (qemu)"
(cd /tmp && $QEMU "$VENV/bin/python" -c "$SMOKE; np.save('$ROOT/out/y_aarch64.npy', y)")
step "smoke on host"
(cd /tmp && "$HOSTPY" -c "$SMOKE; np.save('$ROOT/out/y_x86_64.npy', y)")

step "compare"
"$HOSTPY" - "$ROOT/out" <<'EOF'
import sys, numpy as np
d = sys.argv[1]
a, x = np.load(f"{d}/y_aarch64.npy"), np.load(f"{d}/y_x86_64.npy")
diff = float(np.max(np.abs(a.astype(np.float64) - x.astype(np.float64))))
print(f"shape {a.shape} vs {x.shape}, dtype {a.dtype}, max abs diff aarch64 vs x86_64 = {diff:.3e}")
sys.exit(0 if a.shape == x.shape and diff < 1e-3 else 1)
EOF
step "done"
