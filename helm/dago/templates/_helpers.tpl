{{/* Names and labels shared by every template. */}}

{{- define "dago.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dago.fullname" -}}
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

{{/* Name of one component's resources: <fullname>-<component> (api, worker, envoy, redis). */}}
{{- define "dago.componentName" -}}
{{- printf "%s-%s" (include "dago.fullname" .root | trunc 50 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "dago.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "dago.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "dago.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dago.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one component (dict root, component). */}}
{{- define "dago.componentLabels" -}}
{{ include "dago.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector of one component's pods (dict root, component). */}}
{{- define "dago.componentSelector" -}}
{{ include "dago.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dago.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dago.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dago.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding secret values: the user's existing one or the chart's. */}}
{{- define "dago.secretName" -}}
{{- default (include "dago.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Whether the chart's own Secret is rendered. */}}
{{- define "dago.createSecret" -}}
{{- if not .Values.secrets.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Where the API keys file is mounted (DAGO_API_KEYS_FILE). */}}
{{- define "dago.secretsDir" -}}/etc/dago/secrets{{- end -}}

{{/* Where the namespaces file's ConfigMap is mounted (a directory: edits reach it). */}}
{{- define "dago.namespacesDir" -}}/etc/dago/namespaces{{- end -}}

{{/* Where the API's TLS Secret is mounted. */}}
{{- define "dago.tlsDir" -}}/etc/dago/tls{{- end -}}

{{/* The headless Service of the API: Envoy resolves every API pod (STRICT_DNS) and
balances gRPC streams over them. */}}
{{- define "dago.apiHeadless" -}}
{{- printf "%s-headless" (include "dago.componentName" (dict "root" . "component" "api")) -}}
{{- end -}}

{{/* The Envoy configuration: files/envoy.yaml with the placeholders of
scripts/deploy_assets.py filled in (API host, CORS origin alternatives with the same
escaping as dago.edge.origin_regex, the API's metrics port). */}}
{{- define "dago.envoyConfig" -}}
{{- $origins := list -}}
{{- range .Values.envoy.corsOrigins -}}
{{- if eq . "*" -}}
{{- $origins = append $origins ".*" -}}
{{- else -}}
{{- $origins = append $origins (regexQuoteMeta . | replace "\\*" "[^/]*") -}}
{{- end -}}
{{- end -}}
{{- $host := printf "%s.%s.svc" (include "dago.apiHeadless" .) .Release.Namespace -}}
{{- $l := .Values.envoy.limits -}}
{{- $rps := int $l.clientRps -}}
{{- if eq $rps 0 -}}{{- $rps = 1000000000 -}}{{- end -}}
{{- .Files.Get "files/envoy.yaml" | replace "__DAGO_API_HOST__" $host | replace "__DAGO_CORS_ORIGINS__" (join "|" $origins | replace "'" "''") | replace "__DAGO_METRICS_PORT__" (toString .Values.metrics.port)
  | replace "__DAGO_EDGE_MAX_CONNECTIONS__" (toString (int $l.maxConnections))
  | replace "__DAGO_EDGE_MAX_HEAP_BYTES__" (toString (int64 $l.maxHeapBytes))
  | replace "__DAGO_EDGE_HEADERS_TIMEOUT__" (printf "%ds" (int $l.headersTimeoutSeconds))
  | replace "__DAGO_EDGE_IDLE_TIMEOUT__" (printf "%ds" (int $l.idleTimeoutSeconds))
  | replace "__DAGO_EDGE_WATCH_IDLE_TIMEOUT__" (printf "%ds" (int $l.watchIdleTimeoutSeconds))
  | replace "__DAGO_EDGE_BUFFER_BYTES__" (toString (int $l.bufferBytes))
  | replace "__DAGO_EDGE_CLIENT_RPS__" (toString $rps)
  | replace "__DAGO_EDGE_CLIENT_BURST__" (toString (mul 2 $rps))
  | replace "__DAGO_EDGE_TRUSTED_HOPS__" (toString (int $l.trustedHops)) -}}
{{- end -}}

{{/* The Redis URL when it is not secret (the bundled Redis). */}}
{{- define "dago.bundledRedisUrl" -}}
{{- printf "redis://%s:6379/0" (include "dago.componentName" (dict "root" . "component" "redis")) -}}
{{- end -}}

{{/* Restricted container securityContext, optionally with a uid (dict root, uid). */}}
{{- define "dago.containerSecurityContext" -}}
{{- $ctx := deepCopy .root.Values.securityContext -}}
{{- if .uid -}}
{{- $_ := set $ctx "runAsUser" (int .uid) -}}
{{- $_ := set $ctx "runAsGroup" (int .uid) -}}
{{- $_ := set $ctx "runAsNonRoot" true -}}
{{- end -}}
{{- toYaml $ctx -}}
{{- end -}}

{{/* Pod securityContext for a uid other than dago's (Envoy, Redis). */}}
{{- define "dago.podSecurityContextFor" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* topologySpreadConstraints with this component's selector filled in. */}}
{{- define "dago.topologySpread" -}}
{{- $out := list -}}
{{- range .constraints -}}
{{- $c := deepCopy . -}}
{{- if not $c.labelSelector -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" (include "dago.componentSelector" (dict "root" $.root "component" $.component) | fromYaml)) -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Environment shared by the API and the workers. */}}
{{- define "dago.env" -}}
- name: DAGO_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: DAGO_METRICS_PORT
  value: {{ .Values.metrics.port | quote }}
- name: DAGO_WORKER_METRICS_PORT
  value: {{ .Values.metrics.workerPort | quote }}
- name: DAGO_AUTH
  value: {{ .Values.auth.mode | quote }}
{{- if eq .Values.auth.mode "keys" }}
- name: DAGO_API_KEYS_FILE
  value: {{ printf "%s/api-keys" (include "dago.secretsDir" .) | quote }}
{{- end }}
{{- if .Values.redis.external.enabled }}
- name: DAGO_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "dago.secretName" . }}
      key: redis-url
{{- else }}
- name: DAGO_REDIS_URL
  value: {{ include "dago.bundledRedisUrl" . | quote }}
{{- end }}
- name: ANTHROPIC_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "dago.secretName" . }}
      key: anthropic-api-key
      optional: true
- name: OPENAI_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "dago.secretName" . }}
      key: openai-api-key
      optional: true
{{- if .Values.namespaces }}
- name: DAGO_NAMESPACES_FILE
  value: {{ printf "%s/namespaces.yaml" (include "dago.namespacesDir" .) | quote }}
{{- end }}
{{- range $name, $value := .Values.config }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The API's run history (DAGO_POSTGRES_URL from a Secret), when configured. */}}
{{- define "dago.historyEnv" -}}
{{- if and .Values.history.postgresUrl .Values.secrets.existingSecret (not .Values.history.existingSecret) }}
{{- fail "history.postgresUrl is stored in the chart's Secret, which secrets.existingSecret replaces: put the URL in a Secret and set history.existingSecret" }}
{{- end }}
{{- if or .Values.history.existingSecret .Values.history.postgresUrl }}
- name: DAGO_POSTGRES_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.history.existingSecret }}
      name: {{ .Values.history.existingSecret }}
      key: {{ .Values.history.existingSecretKey }}
      {{- else }}
      name: {{ include "dago.secretName" . }}
      key: postgres-url
      {{- end }}
- name: DAGO_MIGRATE_AT_START
  value: {{ .Values.history.migrateAtStart | quote }}
{{- end }}
{{- end -}}

{{/* Volumes shared by the API and the workers: /tmp and the API keys file. */}}
{{- define "dago.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if eq .Values.auth.mode "keys" }}
- name: secrets
  secret:
    secretName: {{ include "dago.secretName" . }}
    items:
      - key: api-keys
        path: api-keys
{{- end }}
{{- if .Values.namespaces }}
- name: namespaces
  configMap:
    name: {{ include "dago.fullname" . }}-namespaces
{{- end }}
{{- end -}}

{{- define "dago.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if eq .Values.auth.mode "keys" }}
- name: secrets
  mountPath: {{ include "dago.secretsDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.namespaces }}
- name: namespaces
  mountPath: {{ include "dago.namespacesDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The HPA of one component (dict root, component, values). */}}
{{- define "dago.hpa" -}}
{{- $a := .values.autoscaling -}}
{{- if $a.enabled }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "dago.componentName" . }}
  labels:
    {{- include "dago.componentLabels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "dago.componentName" . }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    {{- if $a.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $a.targetCPUUtilizationPercentage }}
    {{- end }}
    {{- if $a.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ $a.targetMemoryUtilizationPercentage }}
    {{- end }}
  {{- with $a.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The PDB of one component (dict root, component, values). */}}
{{- define "dago.pdb" -}}
{{- $p := .values.pdb -}}
{{- if $p.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "dago.componentName" . }}
  labels:
    {{- include "dago.componentLabels" . | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" $p.minAvailable) }}
  minAvailable: {{ $p.minAvailable }}
  {{- else }}
  maxUnavailable: {{ default 1 $p.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "dago.componentSelector" . | nindent 6 }}
{{- end }}
{{- end -}}
