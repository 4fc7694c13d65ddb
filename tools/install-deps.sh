#!/bin/bash
# Install the Debian 12 packages libmerge needs to build and test.
# Runs apt only when something is missing, so repeated runs are quick.
set -euo pipefail
packages=(
  build-essential clang libclang-rt-14-dev meson ninja-build pkg-config
  libopenblas-dev liblapacke-dev zlib1g-dev libcjson-dev libyaml-dev check
  python3 python3-numpy python3-pytest python3-torch python3-sklearn
  python3-pip python3-setuptools python3-wheel
  dataset-fashion-mnist abigail-tools valgrind libopenmpi-dev openmpi-bin
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
