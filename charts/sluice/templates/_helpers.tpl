{{- define "sluice.labels" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "sluice.selector" -}}
app.kubernetes.io/name: sluice-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sluice.controllerImage" -}}
{{ .Values.controller.image.repository }}:{{ .Values.controller.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "sluice.dataPlaneImage" -}}
{{ .Values.dataPlane.image.repository }}:{{ .Values.dataPlane.image.tag | default .Chart.AppVersion }}
{{- end }}
