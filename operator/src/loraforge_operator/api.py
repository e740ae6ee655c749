"""Identity of loraforge's Kubernetes API: group, version and kinds.

Everything that names the API (CRDs, RBAC rules, the operator's handlers,
annotations and finalizers) derives from these constants.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "loraforge.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# kubectl category that lists every loraforge resource: `kubectl get loraforge`.
CATEGORY = "loraforge"


@dataclass(frozen=True)
class Resource:
    """A kind the operator reads or writes, and where the API serves it."""

    group: str  # "" for the core API
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gvp(self) -> tuple[str, str, str]:
        """(group, version, plural): how kopf names a resource to watch or index."""
        return (self.group, self.version, self.plural)

    def collection(self, namespace: str | None = None) -> str:
        """URL path of the collection: in ``namespace`` for a namespaced kind (all namespaces without one)."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        if not self.namespaced and namespace:
            raise ValueError(f"{self.kind} is not namespaced")
        return f"{prefix}/{self.plural}"


def _table(*resources: Resource) -> dict[str, Resource]:
    return {r.kind: r for r in resources}


# The one table of every kind the operator touches: the client's URLs, the watches and indexes, and the
# CRDs' names all come from it.
FINETUNEJOB = Resource(GROUP, VERSION, "finetunejobs", "FineTuneJob")
MODELDEPLOYMENT = Resource(GROUP, VERSION, "modeldeployments", "ModelDeployment")
RESOURCES = _table(
    FINETUNEJOB,
    MODELDEPLOYMENT,
    Resource("", "v1", "configmaps", "ConfigMap"),
    Resource("", "v1", "serviceaccounts", "ServiceAccount"),
    Resource("", "v1", "services", "Service"),
    Resource("", "v1", "pods", "Pod"),
    Resource("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    Resource("batch", "v1", "jobs", "Job"),
    Resource("apps", "v1", "deployments", "Deployment"),
    Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    # Another project's API (prometheus-operator): optional; where its CRD is missing nothing is watched.
    Resource("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor"),
    # High availability (peering.py): kopf's peering objects.
    Resource("kopf.dev", "v1", "kopfpeerings", "KopfPeering"),
    Resource("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False),
    # `loraforge approve` asks who the user is.
    Resource("authentication.k8s.io", "v1", "selfsubjectreviews", "SelfSubjectReview", namespaced=False),
)
# loraforge's own kinds -> plural (the CRDs).
KINDS = {r.kind: r.plural for r in (FINETUNEJOB, MODELDEPLOYMENT)}

# Annotations, labels and finalizers live under the API group, never bare.
LABEL_PREFIX = f"{GROUP}/"
FINALIZER = f"{GROUP}/finalizer"
