{{/* Names, labels and the pieces every processor's pod shares. */}}

{{- define "streamquant.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streamquant.fullname" -}}
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

{{- define "streamquant.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "streamquant.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamquant
{{- end }}

{{- define "streamquant.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamquant.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one processor's objects; call with (dict "root" $ "name" "features"). */}}
{{- define "streamquant.componentLabels" -}}
{{ include "streamquant.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "streamquant.componentSelectorLabels" -}}
{{ include "streamquant.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "streamquant.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamquant.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "streamquant.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- printf "%s:%s%s" .Values.image.repository $tag (default "" .Values.image.tagSuffix) }}
{{- end }}

{{/*
The processors, what each consumes and how many partitions bound its consumer group. Returns YAML;
read it with `include "streamquant.processors" . | fromYaml`.
*/}}
{{- define "streamquant.processors" -}}
{{- $c := .Values.config }}
{{- $data := dig "topics" "data_partitions" 8 $c | int }}
{{- $commands := dig "topics" "command_partitions" 3 $c | int }}
features:
  command: [run, features]
  inputs: [ticks]
  group: {{ dig "features" "group" "streamquant-features" $c | quote }}
  partitions: {{ $data }}
  partitionsSetting: config.topics.data_partitions
predictions:
  command: [run, predictions]
  inputs: [features]
  group: {{ dig "predictions" "group" "streamquant-predictions" $c | quote }}
  partitions: {{ $data }}
  partitionsSetting: config.topics.data_partitions
  artifacts: true
jobs:
  command: [run, jobs]
  inputs: [backtest.commands, ml.commands]
  group: {{ dig "jobs" "app_id" "streamquant-jobs" $c | quote }}
  partitions: {{ $commands }}
  partitionsSetting: config.topics.command_partitions
  artifacts: true
  httpPort: {{ dig "jobs" "web_port" 6066 $c | int }}
{{- end }}

{{- define "streamquant.metricsPort" -}}
{{- $port := dig "metrics" "port" 9464 .Values.config | int }}
{{- if eq $port 0 }}
{{- fail "config.metrics.port is 0: the Services, probes and ServiceMonitor need the metrics port" }}
{{- end }}
{{- $port }}
{{- end }}

{{- define "streamquant.topicName" -}}
{{- printf "%s%s" (dig "topics" "prefix" "" .root.Values.config) .logical }}
{{- end }}

{{/*
The settings as STREAMQUANT_<SECTION>_<FIELD> variables (a YAML map, sorted). Lists and maps become JSON;
whole floats are written as integers (Helm reads every number as a float). null and "" are left out, so the
program's default holds.
*/}}
{{- define "streamquant.settingsEnv" -}}
{{- $known := list "kafka" "redis" "topics" "ingest" "metrics" "features" "jobs" "predictions" }}
{{- $secret := list "sasl_password" "ssl_key_password" "password" }}
{{- $env := dict }}
{{- range $section, $fields := .Values.config }}
{{- if not (has $section $known) }}
{{- fail (printf "config.%s is not a settings section; sections: %s" $section (join ", " $known)) }}
{{- end }}
{{- if and $fields (not (kindIs "map" $fields)) }}
{{- fail (printf "config.%s must be a map of field: value" $section) }}
{{- end }}
{{- range $field, $value := $fields }}
{{- if has $field $secret }}
{{- fail (printf "config.%s.%s is a secret: set it through credentials (a Secret), not the ConfigMap" $section $field) }}
{{- end }}
{{- if eq $field "instance_id" }}
{{- fail (printf "config.%s.instance_id would be shared by every replica, which then fence each other's transactions: leave it out (each pod uses its own name)" $section) }}
{{- end }}
{{- $name := printf "STREAMQUANT_%s_%s" (upper $section) (upper $field) }}
{{- if or (kindIs "map" $value) (kindIs "slice" $value) }}
{{- $_ := set $env $name (toJson $value) }}
{{- else if kindIs "float64" $value }}
{{- if eq $value (floor $value) }}
{{- $_ := set $env $name (toString (int64 $value)) }}
{{- else }}
{{- $_ := set $env $name (toString $value) }}
{{- end }}
{{- else if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
{{- $_ := set $env $name (toString $value) }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.kafkaTls }}
{{- if .secretName }}
{{- if .caKey }}
{{- $_ := set $env "STREAMQUANT_KAFKA_SSL_CA_LOCATION" (printf "%s/%s" .mountPath .caKey) }}
{{- end }}
{{- if .certKey }}
{{- $_ := set $env "STREAMQUANT_KAFKA_SSL_CERTIFICATE_LOCATION" (printf "%s/%s" .mountPath .certKey) }}
{{- end }}
{{- if .keyKey }}
{{- $_ := set $env "STREAMQUANT_KAFKA_SSL_KEY_LOCATION" (printf "%s/%s" .mountPath .keyKey) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{- define "streamquant.credentialKeys" -}}
STREAMQUANT_KAFKA_SASL_USERNAME: kafkaSaslUsername
STREAMQUANT_KAFKA_SASL_PASSWORD: kafkaSaslPassword
STREAMQUANT_KAFKA_SSL_KEY_PASSWORD: kafkaSslKeyPassword
STREAMQUANT_REDIS_PASSWORD: redisPassword
{{- end }}

{{/* The chart's own credentials (variable name -> value), the empty ones left out. */}}
{{- define "streamquant.chartCredentials" -}}
{{- $out := dict }}
{{- range $name, $value := include "streamquant.credentialKeys" . | fromYaml }}
{{- $v := get $.Values.credentials $value }}
{{- if $v }}
{{- $_ := set $out $name $v }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* The Secret the processors read credentials from; empty when there are none. */}}
{{- define "streamquant.credentialsSecret" -}}
{{- if .Values.credentials.existingSecret }}
{{- .Values.credentials.existingSecret }}
{{- else if include "streamquant.chartCredentials" . | fromYaml }}
{{- printf "%s-credentials" (include "streamquant.fullname" .) }}
{{- end }}
{{- end }}

{{/* Env entries for the credentials from `secret`; call with (dict "root" $ "secret" NAME). */}}
{{- define "streamquant.credentialsEnv" -}}
{{- if .secret }}
{{- $keys := include "streamquant.credentialKeys" .root | fromYaml }}
{{- if not .root.Values.credentials.existingSecret }}
{{- $keys = include "streamquant.chartCredentials" .root | fromYaml }}
{{- end }}
{{- range $name, $_ := $keys }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $.secret }}
      key: {{ $name }}
      optional: true
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes every StreamQuant pod has: a writable working directory and /tmp, and the Kafka TLS files. */}}
{{- define "streamquant.baseVolumes" -}}
- name: data
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- if .Values.kafkaTls.secretName }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafkaTls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "streamquant.baseVolumeMounts" -}}
- name: data
  mountPath: /var/lib/streamquant
- name: tmp
  mountPath: /tmp
{{- if .Values.kafkaTls.secretName }}
- name: kafka-tls
  mountPath: {{ .Values.kafkaTls.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
Environment that is not a setting: HOME and Numba's cache in the writable working directory (the image sets
the same; repeated here for a pod that runs as another user, whose HOME the image does not know).
*/}}
{{- define "streamquant.runtimeEnv" -}}
- name: HOME
  value: /var/lib/streamquant
- name: NUMBA_CACHE_DIR
  value: /var/lib/streamquant/.cache/numba
{{- end }}

{{/*
A consumer group gives each partition to one member: instances beyond the input's partitions only idle.
Call with (dict "name" NAME "values" .Values.NAME "proc" PROCESSOR "root" $).
*/}}
{{- define "streamquant.checkReplicas" -}}
{{- $parts := int .proc.partitions }}
{{- if gt (int .values.replicas) $parts }}
{{- fail (printf "%s.replicas is %d but %s is %d: a consumer group gives each partition to one instance, so replicas must be at most the partitions (raise the partitions or lower replicas)" .name (int .values.replicas) .proc.partitionsSetting $parts) }}
{{- end }}
{{- with .values.autoscaling }}
{{- if .enabled }}
{{- if gt (int .maxReplicas) $parts }}
{{- fail (printf "%s.autoscaling.maxReplicas is %d but %s is %d: autoscaling past the partitions adds only idle instances" $.name (int .maxReplicas) $.proc.partitionsSetting $parts) }}
{{- end }}
{{- if gt (int .minReplicas) (int .maxReplicas) }}
{{- fail (printf "%s.autoscaling.minReplicas (%d) is above maxReplicas (%d)" $.name (int .minReplicas) (int .maxReplicas)) }}
{{- end }}
{{- if not $.root.Values.autoscaling.keda.enabled }}
{{- if lt (int .minReplicas) 1 }}
{{- fail (printf "%s.autoscaling.minReplicas is 0: only KEDA scales to zero (autoscaling.keda.enabled)" $.name) }}
{{- end }}
{{- if not (dig "requests" "cpu" "" ($.values.resources | default (dict))) }}
{{- fail (printf "%s.autoscaling without KEDA scales on CPU utilization: set %s.resources.requests.cpu" $.name $.name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
