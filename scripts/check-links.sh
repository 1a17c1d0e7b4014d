#!/usr/bin/env bash
# Checks every relative Markdown link of README.md, docs/*.md and vendor/README.md, offline:
# `[text](path)` and `[text](path#anchor)` (images and `[ref]: path` definitions too). The
# path must exist relative to the linking file's folder; an anchor into a .md file must be the
# slug of one of its headings by GitHub's rules (lowercase, spaces to '-', punctuation other
# than '-' and '_' dropped, repeated headings suffixed -1, -2, …). http(s) and mailto links are
# skipped; so are fenced code blocks and `inline code`.
#   scripts/check-links.sh          prints `FILE: broken link TARGET` per broken link, exit 1;
#                                   else `links: N checked, all resolve`, exit 0.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C.UTF-8

# The link targets of one Markdown file, one a line. Lines of a paragraph are joined first, so
# a link whose text is wrapped over two lines is still found.
targets() {
  awk '
    function flush(   s, t) {
      s = buf; buf = ""
      gsub(/`[^`]*`/, "", s)                     # inline code holds no links
      while (match(s, /\]\([^)]*\)/)) {
        t = substr(s, RSTART + 2, RLENGTH - 3)
        s = substr(s, RSTART + RLENGTH)
        sub(/^[ \t]*</, "", t); sub(/>[ \t]*$/, "", t)
        sub(/[ \t].*$/, "", t)                   # drop a "title"
        if (t != "") print t
      }
    }
    /^[ \t]*(```|~~~)/ { flush(); fence = !fence; next }
    fence { next }
    /^[ \t]*\[[^]]+\]:[ \t]*[^ \t]/ {            # reference definition
      flush(); t = $0; sub(/^[ \t]*\[[^]]+\]:[ \t]*/, "", t); sub(/[ \t].*$/, "", t)
      sub(/^</, "", t); sub(/>$/, "", t); print t; next
    }
    /^[ \t]*$/ { flush(); next }
    { buf = buf " " $0 }
    END { flush() }
  ' "$1"
}

# The anchors of one Markdown file's headings (ATX headings outside code fences), one a line.
anchors() {
  awk '
    /^[ \t]*(```|~~~)/ { fence = !fence; next }
    fence { next }
    /^ ? ? ?##?#?#?#?#?([ \t]|$)/ {   # mawk has no {m,n}
      h = $0
      sub(/^ *#+[ \t]*/, "", h); sub(/[ \t]+#+[ \t]*$/, "", h); sub(/[ \t]+$/, "", h)
      while (match(h, /\[[^]]*\]\([^)]*\)/)) {  # a link in a heading counts by its text
        l = substr(h, RSTART, RLENGTH); sub(/\]\(.*$/, "", l); sub(/^\[/, "", l)
        h = substr(h, 1, RSTART - 1) l substr(h, RSTART + RLENGTH)
      }
      print h
    }
  ' "$1" |
    sed -E 's/.*/\L&/; s/[^[:alnum:] _-]//g; s/ /-/g' |
    awk '{ n = seen[$0]++; print (n ? $0 "-" n : $0) }'
}

checked=0
broken=0
files=(README.md docs/*.md vendor/README.md)
for file in "${files[@]}"; do
  [ -f "$file" ] || continue
  dir=$(dirname "$file")
  while IFS= read -r target; do
    case $target in
      http://* | https://* | mailto:*) continue ;;
    esac
    checked=$((checked + 1))
    path=${target%%#*}
    anchor=
    [ "$path" = "$target" ] || anchor=${target#*#}
    if [ -z "$path" ]; then
      dest=$file
    else
      dest=$dir/$path
    fi
    if [ ! -e "$dest" ]; then
      echo "$file: broken link $target"
      broken=$((broken + 1))
      continue
    fi
    if [ -n "$anchor" ] && [[ $dest == *.md ]] && ! anchors "$dest" | grep -qxF -- "$anchor"; then
      echo "$file: broken link $target"
      broken=$((broken + 1))
    fi
  done < <(targets "$file")
done

if [ "$broken" -gt 0 ]; then
  echo "links: $broken of $checked broken" >&2
  exit 1
fi
echo "links: $checked checked, all resolve"
