{{/*
Names, labels and the few derived values every template shares.
Resource names are <fullname>-<component>. fullname is cut to 32 characters and student names are
at most 24 (values.schema.json), so the longest name, "<fullname>-<student>-runs", stays within
the 63-character limit of label values and DNS labels.
*/}}

{{- define "tropd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 32 | trimSuffix "-" }}
{{- end }}

{{- define "tropd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 32 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 32 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 32 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tropd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "tropd.labels" -}}
helm.sh/chart: {{ include "tropd.chart" . }}
app.kubernetes.io/name: {{ include "tropd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tropd
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component ("teacher" or "student"); pass (dict "ctx" $ "component" "teacher"). */}}
{{- define "tropd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tropd.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tropd.teacher.fullname" -}}
{{- printf "%s-teacher" (include "tropd.fullname" .) }}
{{- end }}

{{/* The headless gRPC Service: one DNS record per ready teacher pod, so clients balance. */}}
{{- define "tropd.teacher.grpcServiceName" -}}
{{- printf "%s-teacher-grpc" (include "tropd.fullname" .) }}
{{- end }}

{{- define "tropd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tropd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret that holds the teacher's tokens file and each job's token (job tokens, issue 5). */}}
{{- define "tropd.auth.secretName" -}}
{{- default (printf "%s-job-tokens" (include "tropd.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{/* Where students send their gRPC calls: the chart's teacher unless trainer.teacherTarget says otherwise.
dns:/// makes gRPC resolve every A record of the headless Service (one per ready pod) and balance
round robin over them, with health checks; a plain host:port would use only the first. */}}
{{- define "tropd.teacherTarget" -}}
{{- if .Values.trainer.teacherTarget }}
{{- .Values.trainer.teacherTarget }}
{{- else }}
{{- printf "dns:///%s.%s.svc.cluster.local:%d" (include "tropd.teacher.grpcServiceName" .) .Release.Namespace (int .Values.teacher.ports.grpc) }}
{{- end }}
{{- end }}

{{/* image reference from {repository, tag} */}}
{{- define "tropd.image" -}}
{{- printf "%s:%s" .repository .tag }}
{{- end }}

{{/*
Checks that the schema cannot express (it sees one key at a time). Rendered once, from
teacher-deployment.yaml, so a bad combination stops `helm install` with a message.
*/}}
{{- define "tropd.validate" -}}
{{- $t := .Values.teacher }}
{{- if $t.enabled }}
{{- $device := toString $t.config.device }}
{{- if and (gt (int $t.gpu.count) 0) (not (hasPrefix "cuda" $device)) }}
{{- fail (printf "teacher.gpu.count is %d but teacher.config.device is %q: set device to \"cuda\"" (int $t.gpu.count) $device) }}
{{- end }}
{{- if and (eq (int $t.gpu.count) 0) (hasPrefix "cuda" $device) }}
{{- fail (printf "teacher.config.device is %q but teacher.gpu.count is 0: request a GPU or use \"cpu\"" $device) }}
{{- end }}
{{- $drain := float64 (default 30 $t.config.drain_grace_s) }}
{{- if le (float64 $t.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "teacher.terminationGracePeriodSeconds (%v) must exceed teacher.config.drain_grace_s (%v), or in-flight work is killed mid-drain" $t.terminationGracePeriodSeconds $drain) }}
{{- end }}
{{- if and $t.modelCache.persistentVolumeClaim.enabled (gt (int $t.replicaCount) 1) (has "ReadWriteOnce" $t.modelCache.persistentVolumeClaim.accessModes) }}
{{- fail "teacher.replicaCount > 1 with a ReadWriteOnce model-cache PVC: use ReadWriteMany or an emptyDir cache" }}
{{- end }}
{{- end }}
{{- if and (not $t.enabled) (not .Values.trainer.teacherTarget) .Values.students }}
{{- fail "teacher.enabled is false: set trainer.teacherTarget to the host:port of the shared teacher" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) (not .Values.auth.jobs) }}
{{- fail "auth.enabled needs auth.existingSecret or a non-empty auth.jobs list" }}
{{- end }}
{{- $seen := dict }}
{{- range .Values.students }}
{{- if hasKey $seen .name }}
{{- fail (printf "students: the name %q appears twice; each job needs its own name (and run directory)" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- end }}
