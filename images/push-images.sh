#!/usr/bin/env bash
# Push the images of a loraforge air-gap bundle into your private registry (inside the air gap).
#
#   ./push-images.sh REGISTRY        e.g. ./push-images.sh registry.example.org/mirror
#
# Reads images.txt beside this script (one line per image: archive, transport, repository:tag, digest;
# operator, trainer, TGI, vLLM) and copies each to REGISTRY/repository:tag, with skopeo where installed
# (the digest is kept), else with docker or podman (load, tag, push). Log in to the registry first
# (skopeo login / docker login). Then install the chart with --set global.imageRegistry=REGISTRY.
set -euo pipefail

[ $# -eq 1 ] || { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
registry="${1%/}"
here="$(cd "$(dirname "$0")" && pwd)"

tool=""
for t in skopeo docker podman; do
  if command -v "$t" >/dev/null 2>&1; then tool="$t"; break; fi
done
[ -n "$tool" ] || { echo "push-images.sh: needs skopeo, docker or podman" >&2; exit 1; }

while read -r archive transport ref digest; do
  case "$archive" in ''|'#'*) continue ;; esac
  target="$registry/$ref"
  echo ">> $ref ($digest) -> $target"
  if [ "$tool" = skopeo ]; then
    skopeo copy --all "$transport:$here/$archive" "docker://$target"
    echo "   pushed: $(skopeo inspect --format '{{.Digest}}' "docker://$target")"
  else
    if [ "$transport" != docker-archive ]; then
      echo "push-images.sh: $archive is an $transport; $tool loads only docker archives: install skopeo" >&2
      exit 1
    fi
    "$tool" load -i "$here/$archive"
    "$tool" tag "$ref" "$target"
    "$tool" push "$target"
  fi
done <"$here/images.txt"
echo ">> done. Install: helm install loraforge $here/charts/loraforge-*.tgz --set global.imageRegistry=$registry"
