#!/usr/bin/env bash
# System tools Argus needs besides Python: Java 17+ (Kafka, Spark), Maven (fetches Kafka's jars),
# Go (builds the Beam Prism runner for `argus stream`) and Chromium (renders the report in a test).
# Installs them with apt-get when missing and allowed (root); otherwise says what to install.
set -euo pipefail

missing=()
java_ok() {
  command -v java >/dev/null 2>&1 || return 1
  local major
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
  [ -n "$major" ] && [ "$major" -ge 17 ]
}
java_ok || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v go >/dev/null 2>&1 || missing+=(golang-go)
# Headless Chromium opens `argus report`'s page in its test (tests/test_report.py): installed where
# apt-get may run, otherwise only a note (that test then skips).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    missing+=(chromium)
  else
    echo "note: without chromium (sudo apt-get install chromium) the report's rendering test is skipped" >&2
  fi
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "error: Argus needs ${missing[*]}; install them (for example: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
