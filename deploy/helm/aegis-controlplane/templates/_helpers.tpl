{{- define "aegis.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aegis.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aegis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aegis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aegis.labels" -}}
{{ include "aegis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "aegis.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "aegis.replicas" -}}
{{- if eq .Values.database.kind "postgres" -}}{{ .Values.replicaCount }}{{- else -}}1{{- end -}}
{{- end -}}

{{- define "aegis.tlsSecret" -}}
{{- if eq .Values.tls.mode "secret" -}}
{{- required "tls.secretName is required with tls.mode=secret" .Values.tls.secretName -}}
{{- else -}}
{{- printf "%s-tls" (include "aegis.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "aegis.bootstrapSecret" -}}
{{- .Values.bootstrapToken.existingSecret | default (printf "%s-bootstrap" (include "aegis.fullname" .)) -}}
{{- end -}}

{{- define "aegis.dnsNames" -}}
{{- $full := include "aegis.fullname" . -}}
{{- $names := list $full (printf "%s.%s" $full .Release.Namespace) (printf "%s.%s.svc" $full .Release.Namespace) (printf "%s.%s.svc.cluster.local" $full .Release.Namespace) -}}
{{- with .Values.advertiseURL -}}{{- $names = append $names (urlParse .).hostname -}}{{- end -}}
{{- concat $names .Values.tls.dnsNames | uniq | toJson -}}
{{- end -}}

{{/* The restricted Pod Security Standard, for every container of the chart. */}}
{{- define "aegis.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "aegis.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Settings shared by the server and the migration Job. */}}
{{- define "aegis.databaseEnv" -}}
{{- if eq .Values.database.kind "postgres" }}
- name: AEGIS_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required with database.kind=postgres: a Secret holding the postgres:// URL" .Values.database.existingSecret }}
      key: {{ .Values.database.secretKey }}
{{- end }}
{{- end -}}
