{{/* The chart name, or nameOverride. */}}
{{- define "speil.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the resources: fullnameOverride, else the release name (with the chart name
appended when the release name does not contain it). */}}
{{- define "speil.fullname" -}}
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

{{- define "speil.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "speil.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "speil.labels" -}}
helm.sh/chart: {{ include "speil.chart" . }}
{{ include "speil.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "speil.selectorLabels" -}}
app.kubernetes.io/name: {{ include "speil.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "speil.serviceAccountName" -}}
{{- default (include "speil.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* repository:tag, or repository:tag@digest when a digest is set. */}}
{{- define "speil.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "speil.pskSecretName" -}}
{{- default (printf "%s-psk" (include "speil.fullname" .)) .Values.speil.psk.existingSecret }}
{{- end }}

{{/* The container security context: the user's, plus root (the socket and certs.d belong to
root) and no privilege escalation or capabilities unless the user set them. */}}
{{- define "speil.securityContext" -}}
{{- $sc := deepCopy (default dict .Values.securityContext) }}
{{- if not (hasKey $sc "runAsUser") }}
{{- $_ := set $sc "runAsUser" 0 }}
{{- end }}
{{- if not (hasKey $sc "allowPrivilegeEscalation") }}
{{- $_ := set $sc "allowPrivilegeEscalation" false }}
{{- end }}
{{- if not (hasKey $sc "capabilities") }}
{{- $_ := set $sc "capabilities" (dict "drop" (list "ALL")) }}
{{- end }}
{{- toYaml $sc }}
{{- end }}

{{/* The registry's mirror target as containerd reaches it. */}}
{{- define "speil.mirrorTarget" -}}
{{- printf "http://$(NODE_IP):%v" .Values.service.registry.nodePort }}
{{- end }}

{{- define "speil.nodeIpEnv" -}}
- name: NODE_IP
{{- if .Values.service.registry.nodeIp }}
  value: {{ .Values.service.registry.nodeIp | quote }}
{{- else }}
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}
{{- end }}
