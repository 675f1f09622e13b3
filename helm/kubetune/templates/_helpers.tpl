{{/*
Names. Kubernetes names are at most 63 characters; the suffixes added below ("-webhook",
"-metrics", ...) are why the base is cut at 48.
*/}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 48 | trimSuffix "-" }}
{{- end }}

{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object the chart creates. */}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The operator pods' selector: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubetune.webhookServiceName" -}}
{{- printf "%s-webhook" (include "kubetune.fullname" .) }}
{{- end }}

{{- define "kubetune.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "kubetune.fullname" .) }}
{{- end }}

{{- define "kubetune.webhookCertName" -}}
{{- printf "%s-webhook" (include "kubetune.fullname" .) }}
{{- end }}

{{/* The namespaces the operator watches in namespaced scope, as a JSON list (fromJsonArray-able). */}}
{{- define "kubetune.watchedNamespaces" -}}
{{- if .Values.scope.namespaces }}
{{- .Values.scope.namespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{- define "kubetune.operatorImage" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "kubetune.trainingImage" -}}
{{- $tag := default .Chart.AppVersion .Values.training.image.tag }}
{{- printf "%s:%s" .Values.training.image.repository $tag }}
{{- end }}

{{/* The kopf peering is on only with several replicas; a single replica runs standalone. */}}
{{- /*
HA: `ha.enabled` true or false, or null (the default): on exactly when the webhook is on, since with
failurePolicy Fail a single replica being replaced refuses every FineTuneJob create meanwhile.
*/}}
{{- define "kubetune.ha" -}}
{{- if kindIs "invalid" .Values.ha.enabled }}{{ if .Values.webhook.enabled }}true{{ end }}{{ else if .Values.ha.enabled }}true{{ end }}
{{- end }}

{{- define "kubetune.peering" -}}
{{- if include "kubetune.ha" . }}true{{- end }}
{{- end }}

{{/* kopf serves a handler at /<handler id>: WEBHOOK_ID in operator/kubetune_operator/webhook.py. */}}
{{- define "kubetune.webhookPath" -}}
/validate-finetunejob
{{- end }}
