#!/bin/sh
# Installs what openxpki-py needs on Debian 12: system packages (only the
# missing ones, so a second run is quick) and a virtualenv built from
# Debian's own /usr/bin/python3.  The venv lives outside any home folder
# because Apache's www-data must be able to read it (mod_wsgi runs it).
#
# The production venv gets the server with its PostgreSQL and Oracle drivers;
# --with-tests adds what the test suite needs (pytest, Playwright, pkilint,
# mypy, the agent's PIV extra), which a production host should not carry, and
# the software OpenPGP card's own venv (GPL-3+, test-only, never in $VENV;
# tests/support/card_venv.py).  pcscd, vpcd and libpcsclite-dev (pyscard's
# build) are for the real smartcard stack the tests drive; with --with-tests,
# libengine-pkcs11-openssl lets `openssl cms -decrypt` use a key on a card
# (the escrow tests open S/MIME mail with the card, as a mail program would).
# The SSO modules
# (mod_auth_gssapi, mod_auth_openidc) are what a site puts in front of the
# application; the OIDC tests run a real OpenID provider (npm oidc-provider,
# pinned by tests/support/oidc/package-lock.json) under node.  --with-bench
# adds what bench/ compares against and nothing else needs: cfssl (Debian
# golang-cfssl), the outside baseline of bench/personalization.py.
#
#   contrib/install/debian-deps.sh [VENV] [--with-tests] [--with-bench]   default VENV: /opt/openxpki-py/venv
set -eu

VENV=/opt/openxpki-py/venv
EXTRAS=postgresql,oracle
TEST_PACKAGES=""
BENCH_PACKAGES=""
for arg in "$@"; do
    case "$arg" in
        --with-tests) EXTRAS=$EXTRAS,test; TEST_PACKAGES="libengine-pkcs11-openssl" ;;
        --with-bench) BENCH_PACKAGES="golang-cfssl" ;;
        -*) echo "debian-deps.sh: unknown option $arg" >&2; exit 2 ;;
        *) VENV=$arg ;;
    esac
done
HERE=$(cd "$(dirname "$0")/../.." && pwd)
TOKEN="$HERE/packages/openxpki-py-token"

PACKAGES="python3-venv python3-dev build-essential libssl-dev
  softhsm2 opensc slapd ldap-utils libldap2-dev libsasl2-dev
  apache2 apache2-dev gnutls-bin openssl chromium
  krb5-kdc krb5-pkinit krb5-user krb5-admin-server libapache2-mod-auth-gssapi curl
  libapache2-mod-auth-openidc
  pcscd vsmartcard-vpcd libpcsclite-dev swig xdg-utils
  $TEST_PACKAGES $BENCH_PACKAGES"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# node and npm: Debian's nodejs + npm, unless a node (with its npm) is there already.
if [ "$EXTRAS" != "${EXTRAS%,test}" ] && ! command -v npm >/dev/null 2>&1; then
    missing="$missing nodejs npm"
fi
if [ -n "$missing" ]; then
    echo "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtualenv $VENV from /usr/bin/python3"
    mkdir -p "$(dirname "$VENV")"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
fi

stamp="$VENV/.openxpki-py-deps"
want=$(printf '%s\n' "$EXTRAS" | cat - "$HERE/setup.cfg" "$TOKEN/setup.cfg" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # mod_wsgi is compiled against this venv's Python; --no-cache-dir so a
    # wheel cached from another interpreter (with its RUNPATH) is never reused.
    "$VENV/bin/pip" install -q --no-cache-dir mod_wsgi
    # One command: pip takes openxpki-py-token from its folder, not an index.
    # The tests drive the agent's optional PIV route (yubikit over pyscard).
    case "$EXTRAS" in *test*) agent="$TOKEN[piv]" ;; *) agent="$TOKEN" ;; esac
    "$VENV/bin/pip" install -q "$agent" "$HERE[$EXTRAS]"
    echo "$want" > "$stamp"
fi
# The project itself, non-editable: www-data reads the installed copy, and
# the checkout may sit in a folder it cannot enter (/root is 0700).
# setuptools builds in build/ and never deletes from it: a module moved or
# removed since the last install would be installed again.
rm -rf "$HERE/build" "$TOKEN/build"
"$VENV/bin/pip" install -q --no-deps --force-reinstall "$TOKEN" "$HERE"
if [ "$EXTRAS" != "${EXTRAS%,test}" ]; then
    /usr/bin/python3 "$HERE/tests/support/card_venv.py" >/dev/null
    # The test OpenID provider, exactly as locked (tests/support/oidc_provider.py).
    if [ ! -d "$HERE/tests/support/oidc/node_modules/oidc-provider" ]; then
        (cd "$HERE/tests/support/oidc" && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi
chmod -R a+rX "$(dirname "$VENV")"
