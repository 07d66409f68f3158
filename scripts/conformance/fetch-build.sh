#!/usr/bin/env bash
# Fetches librdkafka's source (with its tests/) from Debian's source package and builds the
# library and its test runner, once: the result is cached outside the checkout, in
# ${TIDELOG_CONFORMANCE_CACHE:-~/.cache/tidelog-conformance}/<version>/, and a second run only
# prints the runner's path. Prints the path of tests/test-runner on its last line.
#
# The source comes from Debian ${TIDELOG_CONFORMANCE_SUITE:-trixie} (Debian's stable release,
# librdkafka 2.8.0): only a deb-src entry is added, so no binary package changes. bookworm's
# 2.0.2 predates Kafka 4.0 and has a client bug that hangs every test deleting a consumed topic
# (librdkafka #4724, fixed in 2.6.1); see docs/compat.md.
set -euo pipefail

CACHE_ROOT="${TIDELOG_CONFORMANCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tidelog-conformance}"
SUITE="${TIDELOG_CONFORMANCE_SUITE:-trixie}"
PKG=librdkafka
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
log() { echo "fetch-build: $*" >&2; }

# 1. A deb-src entry for $SUITE on the Debian mirror the system already uses.
DEBSRC="/etc/apt/sources.list.d/tidelog-deb-src-$SUITE.sources"
source_version() {  # the version `apt-get source $PKG/$SUITE` would fetch, or nothing
  apt-get source --print-uris -qq "$PKG/$SUITE" 2>/dev/null \
    | sed -n "s|.*/${PKG}_\([^/']*\)\.dsc'.*|\1|p" | head -1 || true
}
VERSION=$(source_version)
if [ -z "$VERSION" ]; then
  if [ ! -f "$DEBSRC" ]; then
    mirror=$(grep -rhoE 'https?://[^ ]*debian\.org/debian/?' /etc/apt/sources.list \
               /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    log "adding $DEBSRC ($mirror $SUITE, sources only)"
    printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
      "$mirror" "$SUITE" /usr/share/keyrings/debian-archive-keyring.gpg \
      | $SUDO tee "$DEBSRC" >/dev/null
  fi
  log "apt-get update (source index of $SUITE only)"
  # only the new entry: the other lists stay as they are
  $SUDO apt-get update -qq -o Dir::Etc::sourcelist="$DEBSRC" -o Dir::Etc::sourceparts=- \
    -o APT::Get::List-Cleanup=0 >/dev/null
  VERSION=$(source_version)
  [ -n "$VERSION" ] || { log "no source package $PKG in Debian $SUITE"; exit 1; }
fi

DIR="$CACHE_ROOT/$VERSION"
UPSTREAM=${VERSION#*:}; UPSTREAM=${UPSTREAM%-*}
SRC="$DIR/$PKG-$UPSTREAM"
RUNNER="$SRC/tests/test-runner"
# PLAINTEXT only: the SSL/SASL tests are excluded, so no TLS, Kerberos or HTTP libraries
CONFIGURE=(--disable-ssl --disable-gssapi --disable-curl --disable-lz4-ext --enable-zlib
           --enable-zstd --disable-debug-symbols)
# zstd and gzip codecs (lz4, snappy are built in); RapidJSON for the tests that check stats JSON
DEPS=(zlib1g-dev libzstd-dev rapidjson-dev)
RECIPE="${CONFIGURE[*]} | ${DEPS[*]}"
if [ -x "$RUNNER" ] && [ "$(cat "$DIR/.built" 2>/dev/null)" = "$RECIPE" ]; then
  echo "$RUNNER"
  exit 0
fi
if [ -f "$DIR/.built" ]; then
  log "build recipe changed: rebuilding from a fresh source tree"
  rm -rf "$SRC" "$DIR/.built"
fi

# 2. Build dependencies.
need=()
for p in "${DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# 3. Source, then build (niced: CI machines are shared).
mkdir -p "$DIR"
if [ ! -f "$SRC/tests/test.c" ]; then
  log "apt-get source $PKG/$SUITE ($VERSION) into $DIR"
  rm -rf "$SRC"
  (cd "$DIR" && apt-get source -qq "$PKG/$SUITE" >"$DIR/source.log" 2>&1) \
    || { tail -5 "$DIR/source.log" >&2; exit 1; }
fi
JOBS=$(nproc 2>/dev/null || echo 2)
start=$(date +%s)
cd "$SRC"
if [ ! -f Makefile.config ]; then
  log "configure ${CONFIGURE[*]}"
  nice -n 19 ./configure "${CONFIGURE[@]}" >"$DIR/configure.log" 2>&1 \
    || { tail -30 "$DIR/configure.log" >&2; exit 1; }
fi
log "building the library and tests/test-runner (make -j$JOBS, nice 19)"
nice -n 19 make -j"$JOBS" libs >"$DIR/build.log" 2>&1 \
  && nice -n 19 make -j"$JOBS" -C tests build >>"$DIR/build.log" 2>&1 \
  || { tail -40 "$DIR/build.log" >&2; exit 1; }
echo "$RECIPE" > "$DIR/.built"
log "built in $(( $(date +%s) - start ))s"
echo "$RUNNER"
