#!/usr/bin/env bash
# Builds the clean-code corpus for the shield's false-positive measurement into
# .cache/corpus/<language>/, from widely used packages of the registries (never run in CI):
#   python     wheels of requests, flask, werkzeug, jinja2, click, urllib3, rich, django (PyPI)
#   javascript npm tarballs of express, lodash, axios, moment, commander, debug, chalk, react-dom
#   typescript npm tarball of rxjs (ships its .ts sources) and zod
#   rust       crates already in ~/.cargo/registry (serde_json, regex, tokio, clap, tree-sitter)
#   c          SQLite (npm better-sqlite3 ships its amalgamation), libxml2 (npm libxmljs2 vendors
#              it), xz/liblzma (npm lzma-native ships its source tarball), Argon2 (npm argon2)
#   cpp        LevelDB and Snappy (npm leveldown), node-addon-api, better-sqlite3's bindings
#   java       OpenJDK 17 class library sources (Debian openjdk-17-source): java.util, java.net, java.io
#   csharp     Edge.js's .NET bridge (npm edge-js) and Python.NET's runtime (PyPI pythonnet sdist)
#   php        Symfony Console, Twig, Monolog, Laravel, Doctrine DBAL, Guzzle, WordPress,
#              phpMyAdmin, Roundcube, DokuWiki (Debian packages, unpacked, not installed)
#   go         golang.org/x/net (Debian golang-golang-x-net-dev)
#   ruby       Rack (Debian ruby-rack) and Ruby's standard library
#   bash       shell scripts shipped in /usr/bin and /usr/sbin by Debian packages
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=.cache/corpus
DL=.cache/corpus-downloads
mkdir -p "$OUT" "$DL"
keep() { # keep LANG DIR EXT...: copy files with these extensions from DIR into the corpus
  local lang=$1 dir=$2; shift 2
  mkdir -p "$OUT/$lang"
  for ext in "$@"; do
    find "$dir" -type f -name "*.$ext" -not -path '*/test*' -not -path '*/node_modules/*/node_modules/*' -print0 |
      while IFS= read -r -d '' f; do cp "$f" "$OUT/$lang/$(echo "$f" | md5sum | cut -c1-12)-$(basename "$f")"; done
  done
}
export DEBIAN_FRONTEND=noninteractive

# Python
[ -d "$OUT/python" ] || {
pip download -q --no-deps --only-binary=:all: -d "$DL/py" requests flask werkzeug jinja2 click urllib3 rich django
for w in "$DL"/py/*.whl; do mkdir -p "$DL/py/x" && unzip -q -o -d "$DL/py/x" "$w"; done
keep python "$DL/py/x" py
}

# JavaScript and TypeScript
[ -d "$OUT/javascript" ] || {
(cd "$DL" && npm pack --silent express lodash axios moment commander debug chalk react-dom rxjs zod >/dev/null)
for t in "$DL"/*.tgz; do d="$DL/npm/$(basename "$t" .tgz)"; mkdir -p "$d" && tar -xzf "$t" -C "$d"; done
find "$DL/npm" -name '*.min.js' -delete
keep javascript "$DL/npm" js
keep typescript "$DL/npm" ts
find "$OUT/typescript" -name '*.d.ts' -delete
}

# Rust
[ -d "$OUT/rust" ] || for c in serde_json regex tokio clap_builder tree-sitter; do
  d=$(ls -d ~/.cargo/registry/src/*/"$c"-[0-9]* 2>/dev/null | head -n1) && keep rust "$d/src" rs
done

# C, C++ and C# (npm packages that carry native sources): SQLite (better-sqlite3), LevelDB
# and Snappy (leveldown), node-addon-api, Edge.js (C#)
[ -d "$OUT/c" ] || {
(cd "$DL" && npm pack --silent better-sqlite3 leveldown node-addon-api edge-js libxmljs2 lzma-native argon2 >/dev/null)
for t in "$DL"/better-sqlite3-*.tgz "$DL"/leveldown-*.tgz "$DL"/node-addon-api-*.tgz "$DL"/edge-js-*.tgz \
         "$DL"/libxmljs2-*.tgz "$DL"/lzma-native-*.tgz "$DL"/argon2-*.tgz; do
  d="$DL/native/$(basename "$t" .tgz)"; mkdir -p "$d" && tar -xzf "$t" -C "$d"
done
find "$DL/native" -name '*.tar.gz' -exec sh -c 'tar -xzf "$1" -C "$(dirname "$1")"' _ {} \;
find "$DL/native" -name '*.tar.bz2' -exec sh -c 'tar -xjf "$1" -C "$(dirname "$1")"' _ {} \;
keep c "$DL/native" c
keep cpp "$DL/native" cpp cc hpp h
keep csharp "$DL/native" cs
}

# More C#: Python.NET's runtime (the PyPI sdist carries its C# sources; pip cannot build
# its metadata here, so the file is taken from PyPI's simple index directly)
[ -f "$DL/pythonnet-3.2.1.tar.gz" ] || {
url=$(curl -fsS https://pypi.org/simple/pythonnet/ | grep -o 'https://files.pythonhosted.org[^"#]*pythonnet-3\.2\.1\.tar\.gz' | head -n1)
curl -fsS -o "$DL/pythonnet-3.2.1.tar.gz" "$url"
}
[ -d "$DL/pythonnet" ] || {
mkdir -p "$DL/pythonnet" && tar -xzf "$DL/pythonnet-3.2.1.tar.gz" -C "$DL/pythonnet"
find "$DL/pythonnet" -type d -name '*tests*' -prune -exec rm -rf {} +
}
keep csharp "$DL/pythonnet" cs  # names come from the source paths: copying again changes nothing

# Java, PHP, Go, Ruby from Debian
apt-get install -y -q openjdk-17-source golang-golang-x-net-dev ruby-rack >/dev/null
mkdir -p "$DL/jdk" && unzip -q -o -d "$DL/jdk" /usr/lib/jvm/openjdk-17/lib/src.zip 'java.base/java/util/*' 'java.base/java/net/*' 'java.base/java/io/*'
keep java "$DL/jdk" java
[ -d "$OUT/php" ] || {
# Unpacked with dpkg-deb: these are applications (WordPress, phpMyAdmin...) whose installation
# would pull in a web server and a database; only their sources are wanted.
mkdir -p "$DL/phpdeb" "$DL/php"
(cd "$DL/phpdeb" && apt-get download -q php-symfony-console php-twig php-monolog php-laravel-framework \
  php-doctrine-dbal php-guzzlehttp-guzzle wordpress phpmyadmin roundcube-core dokuwiki >/dev/null)
for deb in "$DL"/phpdeb/*.deb; do dpkg-deb -x "$deb" "$DL/php"; done
keep php "$DL/php" php
}
keep go /usr/share/gocode/src/golang.org/x/net go
keep ruby "$(dirname "$(dpkg -L ruby-rack | grep '/rack.rb$' | head -n1)")/rack" rb
keep ruby "$(ls -d /usr/lib/ruby/3.* | head -n1)" rb

# Shell scripts
mkdir -p "$OUT/bash"
for f in /usr/bin/* /usr/sbin/*; do
  [ -f "$f" ] && head -c 64 "$f" | grep -qE '^#!.*\b(ba)?sh\b' && cp "$f" "$OUT/bash/$(basename "$f").sh"
done

for d in "$OUT"/*; do echo "$(basename "$d"): $(ls "$d" | wc -l) files, $(cat "$d"/* | wc -l) lines"; done
