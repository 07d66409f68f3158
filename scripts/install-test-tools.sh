#!/usr/bin/env bash
# Installs the non-Python tools the tests use (kcat), idempotently.
set -euo pipefail
if ! command -v kcat >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null
fi
