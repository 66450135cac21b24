{{/*
Helpers for the streamherd chart. Every helper is prefixed with the chart name so a parent
chart's helpers never collide with these.
*/}}

{{/* The chart name (nameOverride wins), at most 63 characters (a DNS label). */}}
{{- define "streamherd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name prefix of every resource: fullnameOverride, else the release name when it
already contains the chart name, else <release>-<chart>. Truncated to 63 (DNS label).
*/}}
{{- define "streamherd.fullname" -}}
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

{{/* chart label value: name-version, "+" is not allowed in label values. */}}
{{- define "streamherd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: small and immutable (a Deployment's selector cannot change). */}}
{{- define "streamherd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamherd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels on every object the chart creates. */}}
{{- define "streamherd.labels" -}}
helm.sh/chart: {{ include "streamherd.chart" . }}
{{ include "streamherd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamherd
{{- end }}

{{/* Labels of the operator's own objects (workload, pods, Service). */}}
{{- define "streamherd.operatorLabels" -}}
{{ include "streamherd.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "streamherd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamherd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the appVersion. */}}
{{- define "streamherd.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "streamherd.workerImage" -}}
{{- default (include "streamherd.image" .) .Values.operator.workerImage }}
{{- end }}

{{/* Peering is on when asked for, and always with several replicas (the schema insists). */}}
{{- define "streamherd.peeringEnabled" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicas) 1) }}true{{ end }}
{{- end }}

{{- define "streamherd.peeringName" -}}
{{- default (include "streamherd.fullname" .) .Values.peering.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Several replicas run as a StatefulSet: the pod ordinal is each one's peering priority. */}}
{{- define "streamherd.ha" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{/*
<fullname>-<suffix>, the fullname cut so the whole stays within 63 characters.
Call as: include "streamherd.suffixedName" (list . "operator")
*/}}
{{- define "streamherd.suffixedName" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- $room := sub 62 (len $suffix) | int }}
{{- printf "%s-%s" (include "streamherd.fullname" $ctx | trunc $room | trimSuffix "-") $suffix }}
{{- end }}

{{/* Name of the metrics Service (also the StatefulSet's governing service). */}}
{{- define "streamherd.metricsServiceName" -}}
{{- include "streamherd.suffixedName" (list . "metrics") }}
{{- end }}

{{/*
The operator's RBAC rules for the namespaces it watches: exactly the calls the operator and
kopf make (docs/decisions/0020-packaging.md lists who calls what). Used in the ClusterRole
(all namespaces) or in one Role per watched namespace.
*/}}
{{- define "streamherd.namespacedRules" -}}
# The StreamPipelines: watched by kopf; kopf patches its annotations on them (never PUT).
- apiGroups: [streamherd.io]
  resources: [streampipelines]
  verbs: [get, list, watch, patch]
# The operator merge-patches the status subresource (and nothing writes /scale but users).
- apiGroups: [streamherd.io]
  resources: [streampipelines/status]
  verbs: [patch]
# StreamPipelineSnapshots: kopf watches them and patches their finalizer (the operator deletes
# a snapshot's Kafka topic before the object goes) and their status; the operator creates one
# (server-side apply: patch, and create as it creates) before a reset or replay, deletes
# those with the pipeline unless it keeps its state (0110), and releases them under
# retainOnDelete with a merge patch (patch; 0177, 0178).
- apiGroups: [streamherd.io]
  resources: [streampipelinesnapshots]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [streamherd.io]
  resources: [streampipelinesnapshots/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion: clusters that enable the
# OwnerReferencesPermissionEnforcement admission plugin check update on this subresource.
- apiGroups: [streamherd.io]
  resources: [streampipelines/finalizers]
  verbs: [update]
# What the operator creates per pipeline, with server-side apply (PATCH; the API server
# also checks create when the apply creates the object) and deletes when no longer wanted.
# Deployments are watched by kopf (drift repair); list/watch on the rest are reads only.
- apiGroups: [""]
  resources: [configmaps, services, persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors, prometheusrules]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [keda.sh]
  resources: [scaledobjects, triggerauthentications]
  verbs: [get, list, watch, create, patch, delete]
# Read-only: kopf watches the Secrets pipelines reference and the operator hashes their data
# into the pod template, so a rotation rolls the workers. Never written.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
# Read only: the workers' pods (by label) are watched, and what they say keeps them from
# being ready (a crash loop's exit code, an image that cannot be pulled) goes into the
# pipeline's Ready and Degraded conditions (decision 0210). Never their logs.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Events about pipelines (the operator's and kopf's), core v1 only.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* Namespaced kopf peering (operator restricted to namespaces, peering on). */}}
{{- define "streamherd.namespacedPeeringRules" -}}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}

{{/* Cluster-scoped reads the operator needs in every mode. */}}
{{- define "streamherd.clusterRules" -}}
# kopf discovers and watches CRDs (its resource scanning) and the operator checks which
# optional APIs (monitoring.coreos.com, keda.sh) are served before creating their objects.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end }}
