#!/usr/bin/env bash
# Debian tools the library and its tests use beyond Python:
#   ping    (iputils-ping)  LanRecceChart's broadcast ping, the virtual-LAN tests
#   ip      (iproute2)      network namespaces of the virtual-LAN tests
#   setpriv (util-linux)    extra RabbitMQ nodes run as the rabbitmq user
#   openssl (openssl)       TLS certificates of the TLS tests
#   su      (login)         commands run as another user
#   chromium, chromedriver (chromium, chromium-driver)  the browser test of
#                           `miros-rabbitmq view` (headless, driven by Selenium)
# Fast path when all are there. Installs as root (or with sudo). Without them
# it says what is missing and exits 0: the tests that need a missing tool skip
# naming it, and FAIL under CI (tests/prereq.py), so CI cannot go green without.
set -euo pipefail

declare -A want=([ping]=iputils-ping [ip]=iproute2 [setpriv]=util-linux [openssl]=openssl [su]=login
                 [chromium]=chromium [chromedriver]=chromium-driver)
missing=()
for tool in "${!want[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || [ -x "/usr/bin/$tool" ] \
        || [ -x "/sbin/$tool" ] || [ -x "/bin/$tool" ] || missing+=("${want[$tool]}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "ensure_os_packages: missing ${missing[*]} (not root, no sudo): tests needing them skip (fail under CI)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_os_packages: missing ${missing[*]} and no apt-get: tests needing them skip (fail under CI)" >&2
    exit 0
fi
echo "ensure_os_packages: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
