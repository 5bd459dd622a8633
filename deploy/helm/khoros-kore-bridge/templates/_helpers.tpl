{{/* Names ---------------------------------------------------------------------------- */}}

{{- define "kkb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kkb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<suffix>, kept within 63 characters. */}}
{{- define "kkb.componentName" -}}
{{- printf "%s-%s" (include "kkb.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix -}}
{{- end -}}

{{- define "kkb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels: call with (dict "root" $ "component" "ingress") and optionally "pool". */}}
{{- define "kkb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kkb.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- if .pool }}
khoros-kore-bridge/pool: {{ .pool }}
{{- end }}
{{- end -}}

{{- define "kkb.labels" -}}
helm.sh/chart: {{ include "kkb.chart" .root }}
{{ include "kkb.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: khoros-kore-bridge
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kkb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kkb.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kkb.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* NATS ------------------------------------------------------------------------------ */}}

{{/* The bundled NATS chart's fullname (its own helper's rule). */}}
{{- define "kkb.natsFullname" -}}
{{- if .Values.nats.fullnameOverride -}}
{{- .Values.nats.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "nats" .Values.nats.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kkb.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s.%s.svc:4222" (include "kkb.natsFullname" .) .Release.Namespace -}}
{{- else -}}
{{- required "nats.url is required when nats.enabled=false (the NATS the bridge should use)" .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{/* Secrets ---------------------------------------------------------------------------- */}}

{{- define "kkb.secretName" -}}
{{- default (include "kkb.componentName" (dict "root" . "suffix" "secrets")) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* "true" when the secret entry (dict "root" $ "item" "khorosToken") is provided. */}}
{{- define "kkb.secretUsed" -}}
{{- $entry := index .root.Values.secrets .item -}}
{{- if .root.Values.secrets.existingSecret -}}
{{- if $entry.key }}true{{ end -}}
{{- else -}}
{{- if $entry.value }}true{{ end -}}
{{- end -}}
{{- end -}}

{{/*
The secret files a component reads, as YAML `items:` of {item, env}: env is the variable
whose _FILE twin points at the file.
*/}}
{{- define "kkb.secretItems" -}}
{{- $root := .root -}}
{{- $wanted := list -}}
{{- if eq .component "ingress" -}}
{{- if eq $root.Values.khoros.auth "hmac" }}{{ $wanted = append $wanted (list "khorosHmacKeys" "KHOROS_HMAC_KEYS") }}{{ end -}}
{{- if eq $root.Values.khoros.auth "basic" }}{{ $wanted = append $wanted (list "khorosBasicPassword" "KHOROS_BASIC_PASSWORD") }}{{ end -}}
{{- if eq $root.Values.kore.mode "async" }}{{ $wanted = append $wanted (list "koreCallbackToken" "KORE_CALLBACK_TOKEN") }}{{ end -}}
{{- else if eq .component "worker" -}}
{{- $wanted = append $wanted (list "koreClientSecret" "KORE_CLIENT_SECRET") -}}
{{- $wanted = append $wanted (list "koreUserIdKey" "KORE_USER_ID_KEY") -}}
{{- else if eq .component "scheduler" -}}
{{- $wanted = append $wanted (list "khorosToken" "KHOROS_TOKEN") -}}
{{- end }}
items:
{{- range $wanted }}
{{- if include "kkb.secretUsed" (dict "root" $root "item" (index . 0)) }}
  - item: {{ index . 0 }}
    env: {{ index . 1 }}
    key: {{ (index $root.Values.secrets (index . 0)).key | default (index . 0) | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pods ------------------------------------------------------------------------------- */}}

{{/* Every ConfigMap and the chart's Secret: a change rolls every pod. */}}
{{- define "kkb.configChecksum" -}}
{{- $config := include (print .Template.BasePath "/configmap.yaml") . -}}
{{- $secret := include (print .Template.BasePath "/secret.yaml") . -}}
{{- printf "%s\n%s\n%s" $config $secret (toJson .Values.secrets | sha256sum) | sha256sum -}}
{{- end -}}

{{/*
The pod spec parts every Deployment shares. Call with
(dict "root" $ "component" "worker" "pool" "messages" "shutdownSeconds" 20 "preStopSeconds" 0).
*/}}
{{- define "kkb.podCommon" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "kkb.serviceAccountName" $root }}
automountServiceAccountToken: false
enableServiceLinks: false
terminationGracePeriodSeconds: {{ add .shutdownSeconds .preStopSeconds $root.Values.terminationGraceExtraSeconds }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $selector := include "kkb.selectorLabels" . | fromYaml }}
{{- $spread := list -}}
{{- range $root.Values.topologySpreadConstraints }}
{{- $spread = append $spread (merge (dict "labelSelector" (dict "matchLabels" $selector) "matchLabelKeys" (list "pod-template-hash")) .) -}}
{{- end }}
{{- with $spread }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Volumes: /tmp, the secret files, NATS credentials. */}}
{{- define "kkb.volumes" -}}
{{- $root := .root -}}
{{- $items := (include "kkb.secretItems" .) | fromYaml -}}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- if $items.items }}
- name: secrets
  secret:
    secretName: {{ include "kkb.secretName" $root }}
    defaultMode: 0440
    items:
    {{- range $items.items }}
      - key: {{ .key }}
        path: {{ .env }}
    {{- end }}
{{- end }}
{{- if $root.Values.nats.credsSecret }}
- name: nats-creds
  secret:
    secretName: {{ $root.Values.nats.credsSecret }}
    defaultMode: 0440
    items:
      - key: {{ $root.Values.nats.credsSecretKey }}
        path: nats.creds
{{- end }}
{{- end -}}

{{- define "kkb.volumeMounts" -}}
{{- $root := .root -}}
{{- $items := (include "kkb.secretItems" .) | fromYaml -}}
- name: tmp
  mountPath: /tmp
{{- if $items.items }}
- name: secrets
  mountPath: /etc/khoros-kore-bridge/secrets
  readOnly: true
{{- end }}
{{- if $root.Values.nats.credsSecret }}
- name: nats-creds
  mountPath: /etc/khoros-kore-bridge/nats
  readOnly: true
{{- end }}
{{- end -}}

{{/* env: the *_FILE variables, then the component's own `env` map. */}}
{{- define "kkb.env" -}}
{{- $root := .root -}}
{{- $items := (include "kkb.secretItems" .) | fromYaml -}}
{{- range $items.items }}
- name: {{ .env }}_FILE
  value: /etc/khoros-kore-bridge/secrets/{{ .env }}
{{- end }}
{{- if $root.Values.nats.credsSecret }}
- name: NATS_CREDS_FILE
  value: /etc/khoros-kore-bridge/nats/nats.creds
{{- end }}
{{- range $name, $value := .env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* Liveness on /healthz, readiness on /readyz, a start-up allowance for NATS. */}}
{{- define "kkb.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  # /readyz is served on the metrics port only (the ingress' http port is public).
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}
