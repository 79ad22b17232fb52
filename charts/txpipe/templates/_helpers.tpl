{{/* Name prefix of the operator's objects: "<release>-operator" unless overridden. */}}
{{- define "txpipe.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (default "operator" .Values.nameOverride) | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of the operator pods. */}}
{{- define "txpipe.selectorLabels" -}}
app.kubernetes.io/name: txpipe-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object of the chart. */}}
{{- define "txpipe.labels" -}}
{{ include "txpipe.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: txpipe
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The operator's ServiceAccount name. */}}
{{- define "txpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "txpipe.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The watched namespace in namespaced mode (fails the render when it is missing). */}}
{{- define "txpipe.watchNamespace" -}}
{{- required "rbac.watchNamespace is required when rbac.namespaced is true" .Values.rbac.watchNamespace -}}
{{- end -}}

{{/* Namespaces that get the pipeline-pod NetworkPolicies, as a list. */}}
{{- define "txpipe.pipelineNamespaces" -}}
{{- if .Values.networkPolicy.pipelineNamespaces -}}
{{- toJson .Values.networkPolicy.pipelineNamespaces -}}
{{- else if .Values.rbac.namespaced -}}
{{- toJson (list (include "txpipe.watchNamespace" .)) -}}
{{- else -}}
{{- toJson list -}}
{{- end -}}
{{- end -}}

{{/* Selector of the pods of the operator, from another namespace (NetworkPolicy peer). */}}
{{- define "txpipe.operatorPeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Release.Namespace }}
  podSelector:
    matchLabels:
      {{- include "txpipe.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* Peer of the monitoring namespaces (NetworkPolicy). */}}
{{- define "txpipe.monitoringPeer" -}}
- namespaceSelector:
    {{- toYaml .Values.networkPolicy.monitoringNamespaceSelector | nindent 4 }}
{{- end -}}

{{/*
Least privilege: exactly the verbs the operator's code uses (manifests/rbac/cluster-role.yaml
explains each rule). `create` sits next to `patch` because a server-side apply that creates an
object is also authorized as `create`.
*/}}
{{- define "txpipe.operatorRules" -}}
# The custom resource: listed and watched; only its status is written.
- apiGroups: ["txpipe.io"]
  resources: ["transactionpipelines"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["txpipe.io"]
  resources: ["transactionpipelines/status"]
  verbs: ["patch"]
# blockOwnerDeletion on children (OwnerReferencesPermissionEnforcement admission plugin).
- apiGroups: ["txpipe.io"]
  resources: ["transactionpipelines/finalizers"]
  verbs: ["update"]
# Children applied with server-side apply and watched; deleted by garbage collection.
- apiGroups: ["apps"]
  resources: ["statefulsets", "deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Optional children, deleted when the spec drops them.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "create", "patch", "delete"]
# Broker pods: watched; deleted one at a time for rolling restarts (OnDelete StatefulSet).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "delete"]
# Broker volumes: read to compare sizes, patched to grow them.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "patch"]
# spec.tls: the operator's CA and certificate Secrets (by name); cert-manager Certificates.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "create", "patch"]
# Events about pipelines.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
{{- define "txpipe.serviceMonitorCrdRule" -}}
# Whether the ServiceMonitor and cert-manager Certificate CRDs are installed (a GET of each).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames: ["servicemonitors.monitoring.coreos.com", "certificates.cert-manager.io"]
  verbs: ["get"]
{{- end }}
