#!/usr/bin/env bash
# Makes sure Debian's headless-capable Chromium and its WebDriver are installed for the console's browser test
# (tests/e2e/test_console_browser.py drives /usr/bin/chromium through /usr/bin/chromedriver with Selenium).
# Idempotent: does nothing when both are there. Installs Debian's packages as root; the two come from one
# source package, so the driver always matches the browser.
set -euo pipefail

have_chromium() { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }

if have_chromium; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "Chromium or its driver not found (/usr/bin/chromium, /usr/bin/chromedriver)." >&2
    echo "Install them as root, e.g.: sudo apt-get install -y chromium chromium-driver" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends -o Dpkg::Options::=--force-confold chromium chromium-driver fonts-dejavu-core

if ! have_chromium; then
    echo "chromium and chromium-driver were installed but /usr/bin/chromium or /usr/bin/chromedriver is missing" >&2
    exit 1
fi
