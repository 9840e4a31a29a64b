#!/bin/sh
# Installs effdm's Debian dependencies and builds it (Release) into build/.
# Usage: ./scripts/setup.sh        (as root, or with sudo available)
set -eu
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends \
    build-essential cmake pkg-config \
    libopenblas-dev libcmocka-dev libpng-dev libstb-dev libyaml-dev libcjson-dev libzip-dev \
    libcairo2-dev libfontconfig-dev fonts-dejavu-core \
    libopenmpi-dev openmpi-bin \
    dataset-fashion-mnist
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
