#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain and a C
# compiler, only where it is missing: Go (Debian's golang-go), Zig (PyPI's
# ziglang), valgrind, pkg-config and doxygen (Debian), cbindgen (pinned in
# scripts/gen-header.sh). Needs root for apt-get.
set -euo pipefail
ZIG_VERSION=0.17.1

apt_packages=()
command -v go >/dev/null || apt_packages+=(golang-go)
command -v valgrind >/dev/null || apt_packages+=(valgrind)
command -v pkg-config >/dev/null || apt_packages+=(pkg-config)
command -v c++ >/dev/null || apt_packages+=(g++)
command -v doxygen >/dev/null || apt_packages+=(doxygen)
if [[ ${#apt_packages[@]} -gt 0 ]]; then
  echo "installing with apt-get: ${apt_packages[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

if ! python3 -m ziglang version >/dev/null 2>&1; then
  echo "installing ziglang==$ZIG_VERSION with pip"
  python3 -m pip install --quiet "ziglang==$ZIG_VERSION"
fi
echo "go: $(go version)"
echo "zig: $(python3 -m ziglang version)"
echo "valgrind: $(valgrind --version)"
