{{- define "smartedit.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "smartedit.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "smartedit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smartedit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "smartedit.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "smartedit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "smartedit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "smartedit.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "smartedit.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "smartedit.usesGpu" -}}
{{- if ne .Values.runtimeProfile "onnx-cpu" -}}true{{- end -}}
{{- end -}}

{{/* Where tritonserver reads the model repository from, inside the container or remote. */}}
{{- define "smartedit.modelRepositoryPath" -}}
{{- if eq .Values.modelRepository.source "objectStorage" -}}
{{- .Values.modelRepository.objectStorage.uri -}}
{{- else -}}
/models/model_repository
{{- end -}}
{{- end -}}

{{/* PromQL: average milliseconds an admitted edit waited for a slot in the denoising engine,
     per pod, over the last minute. The adapter rule in helm/prometheus-adapter-values.yaml and the
     KEDA trigger both use this expression. */}}
{{- define "smartedit.queueTimeQuery" -}}
sum(rate(smartedit_scheduler_queue_wait_seconds_sum{namespace="{{ .Release.Namespace }}",pod=~"{{ include "smartedit.fullname" . }}-.*"}[1m])) * 1000 / clamp_min(sum(rate(smartedit_scheduler_queue_wait_seconds_count{namespace="{{ .Release.Namespace }}",pod=~"{{ include "smartedit.fullname" . }}-.*"}[1m])), 1e-9)
{{- end -}}

{{/* Cross-field checks the JSON schema cannot express; each fails with the values to change. */}}
{{- define "smartedit.validate" -}}
{{- /* The drain waits up to triton.exitTimeoutSeconds for the edits in flight, then up to 15 s for the
     answers of those it stopped; stopping tritonserver takes up to 30 s more. */ -}}
{{- $drain := add .Values.triton.exitTimeoutSeconds 45 -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $drain) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed triton.exitTimeoutSeconds + 45 (%v): the drain, then the stop; or Kubernetes kills edits in flight" .Values.terminationGracePeriodSeconds $drain) -}}
{{- end -}}
{{- if and (eq .Values.modelRepository.source "objectStorage") (not .Values.modelRepository.objectStorage.uri) -}}
{{- fail "modelRepository.objectStorage.uri is required when modelRepository.source is objectStorage (s3://... or gs://...)" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas (%v) must not exceed autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) -}}
{{- end -}}
{{- if and (eq .Values.runtimeProfile "onnx-cpu") (eq .Values.modelRepository.source "build") (eq .Values.modelRepository.build.precision "fp16") -}}
{{- fail "modelRepository.build.precision fp16 needs a GPU profile; use fp32 with runtimeProfile onnx-cpu" -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the key of Triton's admin APIs (key "admin-key"). */}}
{{- define "smartedit.adminKeySecret" -}}
{{- .Values.triton.adminKey.existingSecret | default (printf "%s-admin-key" (include "smartedit.fullname" .)) -}}
{{- end }}

{{/* Triton's APIs that need the admin key; smartedit/ops/server.py RESTRICTED_APIS lists the same. */}}
{{- define "smartedit.restrictedApis" -}}
shared-memory,model-config,model-repository,statistics,trace,logging
{{- end }}

{{- define "smartedit.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "smartedit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "smartedit.gatewayLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "smartedit.gatewaySelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
