#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain, for `cargo test --workspace` and
# .ci/run: Chromium and its WebDriver from Debian's packages (the dashboard test in
# master/tests/http.rs), and the Python modules of tests/py/ (Selenium, the Prometheus client
# library's parser, PyYAML) for the python3 on PATH, from PyPI, or from Debian's packages
# where that python3 is Debian's own and refuses pip. Does nothing already done; apt-get
# needs root.
#
#   scripts/test-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
updated=
apt_install() {
    [ -n "$updated" ] || { apt-get update -qq; updated=1; }
    apt-get install -y -qq "$@" >/dev/null
}
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_install chromium chromium-driver
fi
chromium --version
chromedriver --version
modules="import selenium, prometheus_client, yaml"
if ! python3 -c "$modules" 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check -r tests/py/requirements.txt ||
        apt_install python3-selenium python3-prometheus-client python3-yaml
fi
python3 -c "$modules; print('python3 modules: selenium', selenium.__version__, '| prometheus_client | PyYAML', yaml.__version__)"
