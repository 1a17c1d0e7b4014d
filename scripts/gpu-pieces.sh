#!/usr/bin/env bash
# Moves a file larger than one call's carry (64 MiB for the whole working tree) to the GPU
# machine in pieces, one call each, back to back while the machine stays warm:
#   here:  scripts/gpu-pieces.sh split FILE DIR [MIB]   # DIR/NNN (MIB each, default 60) and
#                                                       # DIR/manifest (name, size, sha256, count)
#   there: scripts/gpu-pieces.sh append DIR DEST        # in a call that carries DIR/manifest and
#                                                       # one or more DIR/NNN
# `append` adds the pieces it finds in order, skips those already in DEST (DEST.pieces lists
# them, so a repeated call is harmless), refuses a piece out of order, and after the last
# checks DEST's size and sha256 against the manifest: it prints `complete` or fails.
set -euo pipefail
case ${1:-} in
  split)
    file=${2:?usage: $0 split FILE DIR [MIB]} dir=${3:?} mib=${4:-60}
    mkdir -p "$dir"
    rm -f "$dir"/[0-9][0-9][0-9]
    split -b "${mib}M" -d -a 3 "$file" "$dir/"
    n=$(ls "$dir" | grep -cE '^[0-9]{3}$')
    printf '%s %s %s %s\n' "$(basename "$file")" "$(stat -c %s "$file")" \
      "$(sha256sum "$file" | cut -d' ' -f1)" "$n" >"$dir/manifest"
    echo "$n pieces of at most $mib MiB in $dir"
    ;;
  append)
    dir=${2:?usage: $0 append DIR DEST} dest=${3:?}
    read -r _name size sum count <"$dir/manifest"
    touch "$dest" "$dest.pieces"
    for p in $(ls "$dir" | grep -E '^[0-9]{3}$' | sort); do
      grep -qx "$p" "$dest.pieces" && continue
      want=$(printf '%03d' "$(wc -l <"$dest.pieces")")
      [ "$p" = "$want" ] || { echo "piece $p out of order: $dest needs piece $want next" >&2; exit 1; }
      cat "$dir/$p" >>"$dest"
      echo "$p" >>"$dest.pieces"
    done
    have=$(wc -l <"$dest.pieces")
    if [ "$have" -lt "$count" ]; then
      echo "$have of $count pieces in $dest"
      exit 0
    fi
    [ "$(stat -c %s "$dest")" = "$size" ] || { echo "$dest: $(stat -c %s "$dest") bytes, the manifest says $size" >&2; exit 1; }
    [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$sum" ] || { echo "$dest: sha256 differs from the manifest" >&2; exit 1; }
    echo "complete: $dest ($size bytes, sha256 ${sum:0:16})"
    ;;
  *)
    sed -n '2,11p' "$0" >&2
    exit 2
    ;;
esac
