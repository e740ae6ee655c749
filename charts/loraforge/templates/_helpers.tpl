{{/* Names, labels, images and checks shared by the templates. */}}

{{- define "loraforge.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name, with "-loraforge" unless it already says loraforge. */}}
{{- define "loraforge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "loraforge.operatorName" -}}
{{- printf "%s-operator" (include "loraforge.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loraforge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "loraforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loraforge
{{- end -}}

{{/* Selects the operator's pods (never changes across upgrades: a Deployment's selector is immutable). */}}
{{- define "loraforge.operatorSelector" -}}
app.kubernetes.io/name: {{ include "loraforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels of the `helm test` pod. */}}
{{- define "loraforge.testSelector" -}}
app.kubernetes.io/name: {{ include "loraforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end -}}

{{/*
An image reference from {registry, repository, tag, digest}: global.imageRegistry wins over the image's
own registry; an empty tag is the chart's appVersion; a digest pins it. Call with
(dict "image" .Values.x.image "root" $).
*/}}
{{- define "loraforge.image" -}}
{{- $img := .image -}}
{{- $registry := .root.Values.global.imageRegistry | default $img.registry | trimSuffix "/" -}}
{{- $ref := $img.repository -}}
{{- if $registry -}}
{{- $ref = printf "%s/%s" $registry $img.repository -}}
{{- end -}}
{{- $ref = printf "%s:%s" $ref ($img.tag | default .root.Chart.AppVersion) -}}
{{- if $img.digest -}}
{{- $ref = printf "%s@%s" $ref $img.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* The test pod's image: its own, or the operator's when it names no repository. */}}
{{- define "loraforge.testImage" -}}
{{- if .Values.tests.image.repository -}}
{{- include "loraforge.image" (dict "image" .Values.tests.image "root" .) -}}
{{- else -}}
{{- include "loraforge.image" (dict "image" .Values.operator.image "root" .) -}}
{{- end -}}
{{- end -}}

{{- define "loraforge.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The namespaces the operator watches: none (all) in cluster mode. */}}
{{- define "loraforge.watchedNamespaces" -}}
{{- if eq .Values.scope.mode "namespaces" -}}
{{- toJson .Values.workloadNamespaces -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{- define "loraforge.peeringName" -}}
{{- .Values.operator.ha.peeringName | default (include "loraforge.fullname" .) -}}
{{- end -}}

{{/*
The API server's addresses for NetworkPolicies, as a JSON list of CIDRs: networkPolicy.apiServer.cidrs,
or the endpoints of the `kubernetes` Service looked up at install time.
*/}}
{{- define "loraforge.apiServerCIDRs" -}}
{{- $cidrs := list -}}
{{- range .Values.networkPolicy.apiServer.cidrs -}}
{{- $cidrs = append $cidrs . -}}
{{- end -}}
{{- if not $cidrs -}}
{{- $slices := lookup "discovery.k8s.io/v1" "EndpointSlice" "default" "" -}}
{{- range ($slices.items | default list) -}}
{{- if eq (index (.metadata.labels | default dict) "kubernetes.io/service-name" | default "") "kubernetes" -}}
{{- range .endpoints -}}
{{- range .addresses -}}
{{- $cidrs = append $cidrs (printf "%s/%s" . (ternary "128" "32" (contains ":" .))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson (uniq $cidrs) -}}
{{- end -}}

{{/* Ports of the API server: the configured ones plus those of the `kubernetes` endpoints. */}}
{{- define "loraforge.apiServerPorts" -}}
{{- $ports := list -}}
{{- range .Values.networkPolicy.apiServer.ports -}}
{{- $ports = append $ports (int .) -}}
{{- end -}}
{{- if not .Values.networkPolicy.apiServer.cidrs -}}
{{- $slices := lookup "discovery.k8s.io/v1" "EndpointSlice" "default" "" -}}
{{- range ($slices.items | default list) -}}
{{- if eq (index (.metadata.labels | default dict) "kubernetes.io/service-name" | default "") "kubernetes" -}}
{{- range .ports -}}
{{- $ports = append $ports (int .port) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson (uniq $ports) -}}
{{- end -}}

{{/*
NetworkPolicy egress rule to the API server. Where its address is unknown (networkPolicy.apiServer.cidrs
empty and nothing to look up, as under `helm template`), the rule allows its ports on any address, and
NOTES.txt says so: set networkPolicy.apiServer.cidrs to close that.
*/}}
{{- define "loraforge.apiServerEgress" -}}
{{- $cidrs := include "loraforge.apiServerCIDRs" . | fromJsonArray -}}
{{- if $cidrs -}}
- to:
{{- range $cidrs }}
    - ipBlock:
        cidr: {{ . }}
{{- end }}
  ports:
{{- else -}}
# The API server's address is unknown here (set networkPolicy.apiServer.cidrs): its ports, any address.
- ports:
{{- end }}
{{- range (include "loraforge.apiServerPorts" . | fromJsonArray) }}
    - protocol: TCP
      port: {{ . }}
{{- end }}
{{- end -}}

{{/* Checks of combinations the schema cannot express; each fails naming the values to change. */}}
{{- define "loraforge.validate" -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.ha.enabled) -}}
{{- fail (printf "operator.replicas is %d but operator.ha.enabled is false: several replicas must coordinate through kopf peering (set operator.ha.enabled=true) or run one" (int .Values.operator.replicas)) -}}
{{- end -}}
{{- if and (eq .Values.scope.mode "namespaces") (not .Values.workloadNamespaces) -}}
{{- fail "scope.mode is \"namespaces\" but workloadNamespaces is empty: list the namespaces the operator should work in" -}}
{{- end -}}
{{- if and (or .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled) (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) -}}
{{- fail "metrics.serviceMonitor.enabled / metrics.podMonitor.enabled need the Prometheus operator's CRDs (monitoring.coreos.com/v1), which this cluster does not serve" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (eq (int .Values.operator.metricsPort) 0) -}}
{{- fail "metrics.serviceMonitor.enabled needs operator.metricsPort (it is 0, metrics are off)" -}}
{{- end -}}
{{- /* A missing pull secret would leave the operator pod in ImagePullBackOff: say so now. Skipped where the
  chart cannot look (helm template), where lookup returns nothing for the namespace itself. */ -}}
{{- if lookup "v1" "Namespace" "" .Release.Namespace -}}
{{- range .Values.global.imagePullSecrets -}}
{{- if not (lookup "v1" "Secret" $.Release.Namespace .) -}}
{{- fail (printf "global.imagePullSecrets names Secret %q, which does not exist in namespace %q: create it (kubectl create secret docker-registry %s -n %s --docker-server=... ) or remove it from the list" . $.Release.Namespace . $.Release.Namespace) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
