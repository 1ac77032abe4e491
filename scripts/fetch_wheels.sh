#!/usr/bin/env bash
# Download into .whl/ the wheels the offline GPU machine (Python 3.12, x86_64, glibc 2.39, protobuf 7) lacks
# for reidctl and its tests: pyyaml, pytest, and for the Triton backend tritonclient[grpc] with the protobuf 6 it
# requires, python-rapidjson and packaging, lap (the tracker's assignment), and py-spy (scripts/gil_profile.py).
# The server wheel (nvidia-pytriton) goes to .whl/triton-server/: `reidctl setup-triton --start` unpacks it into
# its cache and it must never be installed (its pins would downgrade numpy and tritonclient), while
# scripts/gpu_setup.sh installs .whl/*.whl. Everything is carried to that machine, so the total stays < 64 MB.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
TARGET=(--only-binary=:all: --no-deps --python-version 3.12
        --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"$PYTHON" -m pip download --quiet --disable-pip-version-check "${TARGET[@]}" --dest .whl \
    "tritonclient[grpc]>=2.50,<3" "protobuf>=6.30,<7" python-rapidjson packaging pyyaml pytest pluggy iniconfig onnxslim colorama lap py-spy
"$PYTHON" -m pip download --quiet --disable-pip-version-check "${TARGET[@]}" --dest .whl/triton-server \
    "nvidia-pytriton==0.7.0"
du -sh .whl
