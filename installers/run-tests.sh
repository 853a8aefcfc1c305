#!/usr/bin/env bash
# The test command: set up the host, build everything, run every test.
# Tests that need hardware KVM print a loud "*** SKIPPED" line on other hosts; the record
# of what ran is in target/e2e-results.log.
set -euo pipefail
cd "$(dirname "$0")/.."
./installers/setup-host.sh
rm -f target/e2e-results.log
cargo test --workspace --release "$@"
