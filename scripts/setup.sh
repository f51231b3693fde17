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

# The openssl CLI makes the TLS tests' certificates at test time (Debian's openssl; no Python dependency).
if ! command -v openssl >/dev/null 2>&1; then
  echo "setup: installing the openssl CLI (Debian package 'openssl')" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last successful install.
if [ ! -f .venv/.setup-stamp ] || [ pyproject.toml -nt .venv/.setup-stamp ]; then
  echo "setup: installing drcio and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch .venv/.setup-stamp
fi
