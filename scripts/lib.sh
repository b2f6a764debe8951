#!/usr/bin/env bash
# Shared by cpengine's scripts (sourced, not run).

# The Debian archive URI from this machine's apt configuration: the first deb source (deb822
# .sources or one-line .list) whose suites are a regular distribution (not -security).
debian_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri=$(awk '
      BEGIN { RS=""; FS="\n" }
      {
        types=""; uris=""; suites=""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Types:/)  { types=$i }
          if ($i ~ /^URIs:/)   { uris=$i }
          if ($i ~ /^Suites:/) { suites=$i }
        }
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && suites !~ /security/ && uris != "") {
          sub(/^URIs:[ \t]*/, "", uris); split(uris, u, /[ \t]+/); print u[1]; exit
        }
      }' "$f")
    case "$uri" in *debian*) echo "${uri%/}"; return 0 ;; esac
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(awk '$1 == "deb" && $0 !~ /security/ {
        for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; exit } }' "$f")
    case "$uri" in *debian*) echo "${uri%/}"; return 0 ;; esac
  done
  return 1
}
