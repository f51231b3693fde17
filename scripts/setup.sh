#!/usr/bin/env bash
# One-time (idempotent) set-up used by `make experiment` and `make test`:
# the Prometheus server from Debian where missing, a virtual env in .venv,
# and the project with its test extras installed into it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v prometheus >/dev/null 2>&1 && [ ! -x /usr/bin/prometheus ]; then
  echo "setup: installing the Prometheus server (Debian package 'prometheus')" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# Test tools from Debian (no Python dependency): the openssl CLI makes the TLS tests'
# certificates at test time; libfaketime steps a real controller's wall clock in the
# fault matrix (tests/test_faults.py) without touching the host's clock.
MISSING=()
command -v openssl >/dev/null 2>&1 || MISSING+=(openssl)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || [ "$(uname -m)" != x86_64 ] || MISSING+=(libfaketime)
if [ ${#MISSING[@]} -gt 0 ]; then
  echo "setup: installing ${MISSING[*]} (Debian packages, for the tests)" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${MISSING[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last successful install.
if [ ! -f .venv/.setup-stamp ] || [ pyproject.toml -nt .venv/.setup-stamp ]; then
  echo "setup: installing drcio and its dependencies into .venv" >&2
  # With uv (installed into .venv first): on the 2-core machine, 5 s warm / 24 s cold against pip's 47 s, and it
  # byte-compiles on every core in 21 s against compileall's 32 s. Byte-compiling is not skipped: this machine's
  # environment sets PYTHONDONTWRITEBYTECODE, so these .pyc files are the only ones any process (and the cgroup v2
  # guest, which sees the venv read-only) ever gets. pip stays the fallback where uv cannot be installed.
  if .venv/bin/python -m pip install -q --disable-pip-version-check uv >/dev/null 2>&1; then
    .venv/bin/uv pip install -q --python .venv/bin/python --compile-bytecode -e '.[test]'
  else
    echo "setup: uv not available, installing with pip" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q --no-compile -e '.[test]'
    .venv/bin/python -m compileall -q -j 0 .venv/lib/python*/site-packages >/dev/null
  fi
  touch .venv/.setup-stamp
fi

# kubectl 1.20 from Debian's kubernetes-client, the renderer the deploy/ tests
# use (`kubectl kustomize`), so the manifests stay within what it supports.
# Unpacked into a cache rather than installed: a machine may already have
# another kubectl at /usr/bin/kubectl, which the package would conflict with.
KUBECTL_CACHE=${DRCIO_KUBECTL_CACHE:-/var/cache/drcio/kubernetes-client}
[ -w "$(dirname "$(dirname "$KUBECTL_CACHE")")" ] || [ -d "$KUBECTL_CACHE" ] || KUBECTL_CACHE="$HOME/.cache/drcio/kubernetes-client"
if [ ! -x "$KUBECTL_CACHE/usr/bin/kubectl" ]; then
  echo "setup: unpacking Debian's kubernetes-client (kubectl 1.20) into $KUBECTL_CACHE" >&2
  DL=$(mktemp -d); chmod 755 "$DL"
  if ! (cd "$DL" && apt-get download -qq kubernetes-client 2>/dev/null); then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    $SUDO apt-get update -qq
    (cd "$DL" && apt-get download -qq kubernetes-client 2>/dev/null)
  fi
  mkdir -p "$KUBECTL_CACHE"
  dpkg-deb -x "$DL"/kubernetes-client_*.deb "$KUBECTL_CACHE"
  rm -rf "$DL"
fi

# The cgroup v2 guest of scripts/run-in-v2-kernel.sh (issue 7): QEMU, a static
# busybox for its initramfs, and Debian's generic 6.1 kernel unpacked into a
# cache (never installed over the host's boot). Needs root, as the guest does;
# without root the guest tests skip and say so.
if [ "$(id -u)" -eq 0 ]; then
  VM_PKGS=
  command -v qemu-system-x86_64 >/dev/null 2>&1 || VM_PKGS="$VM_PKGS qemu-system-x86"
  command -v busybox >/dev/null 2>&1 || VM_PKGS="$VM_PKGS busybox-static"
  if [ -n "$VM_PKGS" ]; then
    echo "setup: installing$VM_PKGS for the cgroup v2 guest" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $VM_PKGS >/dev/null
  fi
  VM_CACHE=${DRCIO_VM_CACHE:-/var/cache/drcio/v2-kernel}
  if ! ls -d "$VM_CACHE"/*/boot >/dev/null 2>&1; then
    # The newest 6.1 ABI the archive offers (older ABIs drop out of it over time).
    KPKG=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9]+-[0-9]+-amd64-unsigned$' | awk '{print $1}' | sort -V | tail -n 1)
    if [ -z "$KPKG" ]; then apt-get update -qq; KPKG=$(apt-cache search --names-only '^linux-image-6\.1\.[0-9]+-[0-9]+-amd64-unsigned$' | awk '{print $1}' | sort -V | tail -n 1); fi
    [ -n "$KPKG" ] || { echo "setup: no linux-image-6.1.*-amd64-unsigned package in the apt sources" >&2; exit 1; }
    KREL=${KPKG#linux-image-}; KREL=${KREL%-unsigned}
    echo "setup: unpacking $KPKG into $VM_CACHE/$KREL for the cgroup v2 guest" >&2
    DL=$(mktemp -d); chmod 755 "$DL"
    (cd "$DL" && apt-get download -qq "$KPKG" 2>/dev/null)
    mkdir -p "$VM_CACHE"
    dpkg-deb -x "$DL"/*.deb "$DL/root"
    busybox depmod -b "$DL/root" "$KREL"  # the package ships no modules.dep (depmod runs at install)
    rm -rf "${VM_CACHE:?}/$KREL"
    mv "$DL/root" "$VM_CACHE/$KREL"
    rm -rf "$DL"
  fi
else
  echo "setup: not root, so no cgroup v2 guest (scripts/run-in-v2-kernel.sh); its tests will skip" >&2
fi
