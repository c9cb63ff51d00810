{{/*
Chart name, truncated to 63 characters (DNS label).
*/}}
{{- define "kernel-orchestrator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart name>, or the release name when it contains the chart name.
*/}}
{{- define "kernel-orchestrator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
helm.sh/chart label value.
*/}}
{{- define "kernel-orchestrator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels of every object.
*/}}
{{- define "kernel-orchestrator.labels" -}}
helm.sh/chart: {{ include "kernel-orchestrator.chart" . }}
app.kubernetes.io/name: {{ include "kernel-orchestrator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kernel-orchestrator
{{- end }}

{{/*
Selector labels of the orchestrator pod. The component label keeps them from ever
matching kernel pods (app.kubernetes.io/component: kernel).
*/}}
{{- define "kernel-orchestrator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kernel-orchestrator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: orchestrator
{{- end }}

{{/*
Name of the orchestrator's ServiceAccount.
*/}}
{{- define "kernel-orchestrator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kernel-orchestrator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Namespace the kernel pods run in.
*/}}
{{- define "kernel-orchestrator.kernelNamespace" -}}
{{- default .Release.Namespace .Values.kernels.namespace }}
{{- end }}

{{/*
The ClusterRole bound in each per-user kernel namespace.
*/}}
{{- define "kernel-orchestrator.kernelNamespaceRole" -}}
{{- printf "%s-%s-kernel-namespace" .Release.Namespace (include "kernel-orchestrator.fullname" .) | trunc 253 }}
{{- end }}

{{/*
Refuse to render without per-user tokens or an explicit admin token.
*/}}
{{- define "kernel-orchestrator.requireAuth" -}}
{{- if .Values.hub.enabled }}
{{- if or .Values.auth.users .Values.auth.existingUsersSecret }}
{{- fail "kernel-orchestrator: hub.enabled and auth.users / auth.existingUsersSecret exclude each other: with a Hub, the Hub's users are the gateway's" }}
{{- end }}
{{- if not (and .Values.hub.apiUrl .Values.hub.existingTokenSecret) }}
{{- fail "kernel-orchestrator: hub.enabled needs hub.apiUrl and hub.existingTokenSecret (the gateway's Hub service token)" }}
{{- end }}
{{- if and .Values.kernels.kubernetesProvisioner (not .Values.kernels.namespacePerUser) (eq (include "kernel-orchestrator.kernelNamespace" .) .Release.Namespace) }}
{{- fail "kernel-orchestrator: with hub.enabled, kernel pods must not run in the Hub's namespace (where the gateway can create pods, a pod could mount the hub's Secret): set kernels.namespace to another namespace, or kernels.namespacePerUser" }}
{{- end }}
{{- else if not (or .Values.auth.users .Values.auth.existingUsersSecret .Values.auth.token .Values.auth.existingSecret) }}
{{- fail "kernel-orchestrator: set auth.users or auth.existingUsersSecret (a token per user), hub.enabled (JupyterHub's users), or auth.token / auth.existingSecret for a single-user gateway: the chart makes up no shared token" }}
{{- end }}
{{- end }}

{{/*
Whether the gateway has per-user tokens / an admin token.
*/}}
{{- define "kernel-orchestrator.hasUsers" -}}
{{- if or .Values.auth.users .Values.auth.existingUsersSecret }}true{{ end }}
{{- end }}
{{- define "kernel-orchestrator.hasAdminToken" -}}
{{- if or .Values.auth.token .Values.auth.existingSecret }}true{{ end }}
{{- end }}

{{/*
Name of the Secret holding the users file (the existing one, or the chart's).
*/}}
{{- define "kernel-orchestrator.usersSecretName" -}}
{{- if .Values.auth.existingUsersSecret }}
{{- .Values.auth.existingUsersSecret }}
{{- else }}
{{- printf "%s-users" (include "kernel-orchestrator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the token (the existing one, or the chart's).
*/}}
{{- define "kernel-orchestrator.tokenSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-token" (include "kernel-orchestrator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Name of the ConfigMap with the kernelspecs and the server config.
*/}}
{{- define "kernel-orchestrator.configMapName" -}}
{{- printf "%s-config" (include "kernel-orchestrator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the store's PersistentVolumeClaim.
*/}}
{{- define "kernel-orchestrator.claimName" -}}
{{- if .Values.persistence.existingClaim }}
{{- .Values.persistence.existingClaim }}
{{- else }}
{{- printf "%s-store" (include "kernel-orchestrator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Image reference.
*/}}
{{- define "kernel-orchestrator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Where the ConfigMap is mounted: JUPYTER_PATH (kernelspecs under kernels/<name>/) and,
below it, the config directory (JUPYTER_CONFIG_PATH).
*/}}
{{- define "kernel-orchestrator.jupyterPath" -}}
/etc/kernel-orchestrator/jupyter
{{- end }}
{{- define "kernel-orchestrator.configPath" -}}
/etc/kernel-orchestrator/jupyter/config
{{- end }}

{{/*
Whether the kernel store is an external PostgreSQL database (its URL in a Secret);
rendering fails for several replicas on the single-writer SQLite store.
*/}}
{{- define "kernel-orchestrator.postgresStore" -}}
{{- if .Values.store.postgresql.existingSecret -}}
true
{{- else if gt (int .Values.replicaCount) 1 -}}
{{- fail "kernel-orchestrator: replicaCount > 1 needs an external PostgreSQL store (store.postgresql.existingSecret, a Secret holding its URL): the embedded SQLite store is single-writer" }}
{{- end -}}
{{- end }}

{{/*
Store URL: an SQLite file on the store volume.
*/}}
{{- define "kernel-orchestrator.storeURL" -}}
{{- printf "sqlite:///%s/kernels.db" (.Values.persistence.mountPath | trimSuffix "/") }}
{{- end }}

{{/*
ConfigMap key of a kernelspec (keys cannot contain "/"; the volume's items put each at
kernels/<name>/kernel.json).
*/}}
{{- define "kernel-orchestrator.kernelspecKey" -}}
{{- printf "kernelspec.%s.json" . }}
{{- end }}

{{/*
A kernelspec as rendered: the Kubernetes provisioner's namespace defaults to the kernel
namespace. Call with (dict "root" $ "spec" $spec).
*/}}
{{- define "kernel-orchestrator.kernelspec" -}}
{{- $spec := deepCopy .spec }}
{{- $meta := default (dict) (get $spec "metadata") }}
{{- $prov := default (dict) (get $meta "kernel_provisioner") }}
{{- if eq (toString (get $prov "provisioner_name")) "kubernetes-provisioner" }}
{{- $config := default (dict) (get $prov "config") }}
{{- if not (get $config "namespace") }}
{{- $_ := set $config "namespace" (include "kernel-orchestrator.kernelNamespace" .root) }}
{{- end }}
{{- if and .root.Values.kernels.namespacePerUser (not (hasKey $config "namespace_template")) }}
{{- $_ := set $config "namespace_template" .root.Values.kernels.namespaceTemplate }}
{{- if not (hasKey $config "create_namespace") }}
{{- $_ := set $config "create_namespace" true }}
{{- end }}
{{- if not (hasKey $config "namespace_role") }}
{{- $_ := set $config "namespace_role" (include "kernel-orchestrator.kernelNamespaceRole" .root) }}
{{- end }}
{{- if not (hasKey $config "orchestrator_pod_labels") }}
{{- $_ := set $config "orchestrator_pod_labels" (include "kernel-orchestrator.selectorLabels" .root | fromYaml) }}
{{- end }}
{{- if not (hasKey $config "orchestrator_service_account") }}
{{- $_ := set $config "orchestrator_service_account" (printf "%s/%s" .root.Release.Namespace (include "kernel-orchestrator.serviceAccountName" .root)) }}
{{- end }}
{{- end }}
{{- $_ := set $prov "config" $config }}
{{- $_ := set $meta "kernel_provisioner" $prov }}
{{- $_ := set $spec "metadata" $meta }}
{{- end }}
{{- toPrettyJson $spec }}
{{- end }}

{{/*
RBAC rules of the Kubernetes provisioner on kernel pods (the same in a Role and in the
cluster-wide ClusterRole).
*/}}
{{- define "kernel-orchestrator.kernelRules" -}}
{{- /* With per-user namespaces the one pod watch is cluster-wide (the orchestrator's
ClusterRole); the kernel role then needs no list or watch of its own. */}}
- apiGroups: [""]
  resources: ["pods"]
{{- if .Values.kernels.namespacePerUser }}
  verbs: ["create", "delete"]
{{- else }}
  verbs: ["create", "list", "watch", "delete"]
{{- end }}
{{- /* Websocket upgrades (the Python client's port-forward and exec) are GETs that the
API server also authorizes as "create": both verbs are needed, and both are used. */}}
{{- if .Values.kernels.portForward }}
- apiGroups: [""]
  resources: ["pods/portforward"]
  verbs: ["get", "create"]
{{- end }}
{{- if .Values.kernels.execForSignals }}
- apiGroups: [""]
  resources: ["pods/exec"]
  verbs: ["get", "create"]
{{- end }}
{{- if .Values.kernels.readPodLogs }}
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
{{- end }}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "delete"]
{{- if .Values.kernels.readClaims }}
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
{{- end }}
{{- end }}

{{/*
CEL: a pod the orchestrator creates lands only in a namespace that enforces PodSecurity
restricted (so a compromised orchestrator cannot make privileged pods).
*/}}
{{- define "kernel-orchestrator.restrictedPodsRule" -}}
request.resource.resource != 'pods' || (has(namespaceObject.metadata.labels) && 'pod-security.kubernetes.io/enforce' in namespaceObject.metadata.labels && namespaceObject.metadata.labels['pod-security.kubernetes.io/enforce'] == 'restricted')
{{- end }}

{{- define "kernel-orchestrator.restrictedPodsMessage" -}}
the orchestrator creates kernel pods only in namespaces that enforce PodSecurity restricted: label the kernel namespace pod-security.kubernetes.io/enforce=restricted
{{- end }}
