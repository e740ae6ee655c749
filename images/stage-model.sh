#!/usr/bin/env bash
# Stage a base model into loraforge's model store (a PersistentVolumeClaim) from a machine with kubectl,
# with nothing downloaded: the model comes from this machine's disk.
#
#   stage-model.sh [options] SOURCE NAME
#
#   SOURCE  a model folder (config.json, tokenizer files, *.safetensors), or a .gguf file, which the
#           trainer image's loraforge-stage-model turns into such a folder inside the cluster
#   NAME    the folder under base/ in the store; FineTuneJobs and ModelDeployments then say
#           `baseModel: {path: base/NAME}`
#
# Options:
#   -n NAMESPACE   namespace of the claim (default: kubectl's current namespace)
#   -c CLAIM       the model store claim (default: loraforge-model-store)
#   -i IMAGE       the trainer image, from your registry (default: loraforge/trainer:0.1.0)
#   -u UID         UID/GID the trainer image runs as (default: 1000, the chart's trainer.uid)
#   -s SECRET      an image pull secret for the staging pod (repeatable)
#   --print-pod    print the staging pod's manifest and exit (to review it, or dry-run it)
#
# How: a short-lived pod of the trainer image mounts the claim (Pod Security "restricted" admits it);
# the folder is streamed in with tar over `kubectl exec` into base/.NAME.partial and renamed to base/NAME
# once complete, so a FineTuneJob never sees half a model. An existing base/NAME is left alone (exit 3).
# The pod is deleted at the end, also on failure.
set -euo pipefail

namespace=""
claim="loraforge-model-store"
image="loraforge/trainer:0.1.0"
uid=1000
secrets=()
print_pod=0
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    -n) namespace="$2"; shift 2 ;;
    -c) claim="$2"; shift 2 ;;
    -i) image="$2"; shift 2 ;;
    -u) uid="$2"; shift 2 ;;
    -s) secrets+=("$2"); shift 2 ;;
    --print-pod) print_pod=1; shift ;;
    -h|--help) usage ;;
    -*) echo "stage-model.sh: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -eq 2 ] || usage
source="$1"
name="$2"
if ! [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
  echo "stage-model.sh: NAME must be one folder name (letters, digits, . _ -), got '$name'" >&2
  exit 2
fi
if ! [[ "$uid" =~ ^[1-9][0-9]*$ ]]; then
  echo "stage-model.sh: -u needs a numeric non-root UID, got '$uid'" >&2
  exit 2
fi

kubectl_ns=()
[ -n "$namespace" ] && kubectl_ns=(-n "$namespace")
pod="loraforge-stage-$(echo "$name" | tr 'A-Z._' 'a-z--' | cut -c1-30)-$RANDOM"
pull_secrets=""
for s in "${secrets[@]+"${secrets[@]}"}"; do
  pull_secrets="${pull_secrets:+$pull_secrets, }{\"name\": \"$s\"}"
done

manifest() {
  cat <<EOF
{
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {"name": "$pod", "labels": {"app.kubernetes.io/name": "loraforge", "app.kubernetes.io/component": "stage-model"}},
  "spec": {
    "restartPolicy": "Never",
    "automountServiceAccountToken": false,
    "enableServiceLinks": false,
    "terminationGracePeriodSeconds": 1,
    "imagePullSecrets": [$pull_secrets],
    "securityContext": {
      "runAsNonRoot": true, "runAsUser": $uid, "runAsGroup": $uid, "fsGroup": $uid,
      "seccompProfile": {"type": "RuntimeDefault"}
    },
    "containers": [{
      "name": "stage",
      "image": "$image",
      "command": ["sleep", "86400"],
      "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "16Gi"}},
      "securityContext": {
        "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]}
      },
      "volumeMounts": [{"name": "model-store", "mountPath": "/models"}, {"name": "tmp", "mountPath": "/tmp"}]
    }],
    "volumes": [
      {"name": "model-store", "persistentVolumeClaim": {"claimName": "$claim"}},
      {"name": "tmp", "emptyDir": {}}
    ]
  }
}
EOF
}

if [ "$print_pod" = 1 ]; then
  manifest
  exit 0
fi
if [ -d "$source" ]; then
  [ -f "$source/config.json" ] || { echo "stage-model.sh: $source has no config.json: not a model folder" >&2; exit 2; }
elif [ -f "$source" ]; then
  case "$source" in
    *.gguf) ;;
    *) echo "stage-model.sh: $source is neither a model folder nor a .gguf file" >&2; exit 2 ;;
  esac
else
  echo "stage-model.sh: $source: no such file or folder" >&2
  exit 2
fi

cleanup() { kubectl "${kubectl_ns[@]+"${kubectl_ns[@]}"}" delete pod "$pod" --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT
kube() { kubectl "${kubectl_ns[@]+"${kubectl_ns[@]}"}" "$@"; }

echo ">> starting pod $pod ($image) with claim $claim"
manifest | kube apply -f - >/dev/null
if ! kube wait --for=condition=Ready "pod/$pod" --timeout=300s >/dev/null; then
  echo "stage-model.sh: pod $pod did not become Ready; its events:" >&2
  kube describe pod "$pod" >&2 || true
  exit 1
fi

# The in-pod steps take the mount point and the names as arguments, never spliced into the script.
# shellcheck disable=SC2016
in_pod_claim='set -eu
store="$1"; name="$2"
if [ -e "$store/base/$name" ]; then echo "base/$name already exists in the store; left alone" >&2; exit 3; fi
rm -rf "$store/base/.$name.partial"
mkdir -p "$store/base/.$name.partial"'
# shellcheck disable=SC2016
in_pod_commit='set -eu
store="$1"; name="$2"
test -f "$store/base/.$name.partial/config.json"
mv "$store/base/.$name.partial" "$store/base/$name"'

kube exec "$pod" -- sh -c "$in_pod_claim" sh /models "$name"
if [ -d "$source" ]; then
  echo ">> copying $source into base/$name"
  # shellcheck disable=SC2016
  tar -C "$source" -cf - . | kube exec -i "$pod" -- sh -c 'tar -xf - -C "$1/base/.$2.partial"' sh /models "$name"
  kube exec "$pod" -- sh -c "$in_pod_commit" sh /models "$name"
else
  # loraforge-stage-model writes beside its destination and renames: base/NAME appears complete or not at all.
  file="$(basename "$source")"
  echo ">> copying $file, then converting it into base/$name (loraforge-stage-model)"
  # shellcheck disable=SC2016
  kube exec -i "$pod" -- sh -c 'rmdir "$1/base/.$3.partial"; mkdir -p "$1/.staging" && cat > "$1/.staging/$2"' \
    sh /models "$file" "$name" <"$source"
  kube exec "$pod" -- loraforge-stage-model --gguf "/models/.staging/$file" "/models/base/$name"
  # shellcheck disable=SC2016
  kube exec "$pod" -- sh -c 'rm -f "$1/.staging/$2"' sh /models "$file"
fi
echo ">> staged: baseModel.path base/$name in claim $claim"
