#!/usr/bin/env bash
# Installs every Debian 12 package Lancet needs to build, test and benchmark. The only source of
# dependencies: nothing is vendored and nothing is downloaded at build or run time.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential cmake ninja-build pkg-config git ca-certificates \
    nlohmann-json3-dev libcli11-dev libpcre2-dev libutf8proc-dev zlib1g-dev \
    libgtest-dev libgmock-dev \
    libpng-dev libjpeg62-turbo-dev libwebp-dev \
    libavformat-dev libavcodec-dev libswscale-dev libavutil-dev \
    libcpp-httplib-dev curl openmpi-bin \
    chromium nodejs >/dev/null
