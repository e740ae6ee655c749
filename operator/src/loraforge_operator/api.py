"""Identity of loraforge's Kubernetes API: group, version and kinds.

Everything that names the API (CRDs, RBAC rules, the operator's handlers,
annotations and finalizers) derives from these constants.
"""

from __future__ import annotations

GROUP = "loraforge.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# kubectl category that lists every loraforge resource: `kubectl get loraforge`.
CATEGORY = "loraforge"

# Kind -> plural resource name.
KINDS = {
    "FineTuneJob": "finetunejobs",
    "ModelDeployment": "modeldeployments",
}

# Annotations, labels and finalizers live under the API group, never bare.
LABEL_PREFIX = f"{GROUP}/"
FINALIZER = f"{GROUP}/finalizer"
