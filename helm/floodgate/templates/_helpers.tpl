{{/* Names and labels. */}}
{{- define "floodgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "floodgate.fullname" -}}
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

{{- define "floodgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "floodgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "floodgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "floodgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{/* The helm test pod: its own component, so that no selector of the release picks it up. */}}
{{- define "floodgate.testLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "floodgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "floodgate.redisLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "floodgate.redisSelectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "floodgate.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "floodgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "floodgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "floodgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "floodgate.redisName" -}}
{{- printf "%s-redis" (include "floodgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "floodgate.redisHeadless" -}}
{{- printf "%s-redis-headless" (include "floodgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "floodgate.configMapName" -}}
{{- default (printf "%s-config" (include "floodgate.fullname" .)) .Values.config.existingConfigMap -}}
{{- end -}}

{{- define "floodgate.secretName" -}}
{{- printf "%s-secrets" (include "floodgate.fullname" .) -}}
{{- end -}}

{{/* Whether this release runs its own Redis. */}}
{{- define "floodgate.bundledRedis" -}}
{{- if and (eq .Values.store.type "redis") (has .Values.redis.topology (list "sentinel" "standalone")) -}}true{{- end -}}
{{- end -}}

{{- define "floodgate.bundledReplicas" -}}
{{- if eq .Values.redis.topology "sentinel" -}}3{{- else -}}1{{- end -}}
{{- end -}}

{{/* Whether Floodgate and the bundled Redis use a Redis password: auth is on, and a password
is given, or a Secret named, or the chart makes one up for its own Redis. */}}
{{- define "floodgate.redisAuth" -}}
{{- $r := .Values.redis -}}
{{- if and (eq .Values.store.type "redis") $r.auth.enabled (or $r.auth.password $r.auth.existingSecret (include "floodgate.bundledRedis" .)) -}}true{{- end -}}
{{- end -}}

{{/* The Redis password the chart's Secret holds: redis.auth.password, else the one an earlier
release generated (kept across upgrades), else a new random one. */}}
{{- define "floodgate.redisPassword" -}}
{{- if .Values.redis.auth.password -}}
{{- .Values.redis.auth.password -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "floodgate.secretName" .) -}}
{{- if and $existing (index ($existing.data | default dict) "redis-password") -}}
{{- index $existing.data "redis-password" | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Where the Redis password comes from: (secret name, key). */}}
{{- define "floodgate.redisPasswordSecret" -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecret }}{{- else -}}{{ include "floodgate.secretName" . }}{{- end -}}
{{- end -}}

{{- define "floodgate.redisPasswordKey" -}}
{{- if .Values.redis.auth.existingSecret -}}{{ .Values.redis.auth.existingSecretKey }}{{- else -}}redis-password{{- end -}}
{{- end -}}

{{- define "floodgate.adminSecret" -}}
{{- if .Values.admin.existingSecret -}}{{ .Values.admin.existingSecret }}{{- else -}}{{ include "floodgate.secretName" . }}{{- end -}}
{{- end -}}

{{- define "floodgate.adminKey" -}}
{{- if .Values.admin.existingSecret -}}{{ .Values.admin.existingSecretKey }}{{- else -}}admin-key{{- end -}}
{{- end -}}

{{/* Whether the store allows only one Floodgate pod: memory (counters in the process) and
sqlite (counters in a file on a volume one node mounts). */}}
{{- define "floodgate.singleReplica" -}}
{{- if has .Values.store.type (list "memory" "sqlite") -}}true{{- end -}}
{{- end -}}

{{/* The PersistentVolumeClaim holding the SQLite database. */}}
{{- define "floodgate.sqliteClaim" -}}
{{- default (printf "%s-data" (include "floodgate.fullname" .)) .Values.store.sqlite.persistence.existingClaim -}}
{{- end -}}

{{/* The pod's securityContext: podSecurityContext as given; with store.type=sqlite, the data
volume must be writable by the Floodgate user, so an fsGroup (runAsGroup, else 65534) is added
when none is given, and its ownership is changed only when the volume's root does not match. */}}
{{- define "floodgate.podSecurityContext" -}}
{{- $context := deepCopy .Values.podSecurityContext -}}
{{- if eq .Values.store.type "sqlite" -}}
{{- $group := $context.runAsGroup | default 65534 -}}
{{- $context = merge $context (dict "fsGroup" $group "fsGroupChangePolicy" "OnRootMismatch") -}}
{{- end -}}
{{- toYaml $context -}}
{{- end -}}

{{/* Refuse combinations that cannot work, with a message saying what to change. */}}
{{- define "floodgate.validate" -}}
{{- if include "floodgate.singleReplica" . -}}
{{- $memory := eq .Values.store.type "memory" -}}
{{- $why := ternary "store.type=memory keeps counters inside one process" "store.type=sqlite keeps counters in one SQLite file on a volume that one pod mounts" $memory -}}
{{- if .Values.autoscaling.enabled -}}
{{- fail (printf "%s: set autoscaling.enabled=false (and replicaCount=1), or use store.type=redis to scale" $why) -}}
{{- end -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- $because := ternary "each replica would count alone" "pods on other nodes must never share the file" $memory -}}
{{- fail (printf "%s: replicaCount must be 1 (%s), or use store.type=redis" $why $because) -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.store.type "sqlite") (hasPrefix "/etc/floodgate/" (printf "%s/" (dir .Values.store.sqlite.path))) -}}
{{- fail "store.sqlite.path must not be under /etc/floodgate (the config is mounted there, read-only)" -}}
{{- end -}}
{{- if and (eq .Values.server.failureMode "local") (ne .Values.store.type "redis") -}}
{{- fail "server.failureMode=local needs store.type=redis (only a shared store can fail while the replicas run on)" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and .Values.admin.enabled (not .Values.admin.key) (not .Values.admin.existingSecret) -}}
{{- fail "admin.enabled: set admin.key or admin.existingSecret" -}}
{{- end -}}
{{- if and .Values.admin.enabled (has (int .Values.admin.port) (list (int .Values.service.grpcPort) (int .Values.service.httpPort))) -}}
{{- fail "admin.port must differ from service.grpcPort and service.httpPort: the admin API has a port of its own" -}}
{{- end -}}
{{- if and (eq .Values.redis.topology "externalSentinel") (eq .Values.store.type "redis") (not .Values.redis.externalSentinel.sentinels) -}}
{{- fail "redis.topology=externalSentinel needs redis.externalSentinel.sentinels" -}}
{{- end -}}
{{- if and (eq .Values.redis.topology "externalCluster") (eq .Values.store.type "redis") (not .Values.redis.externalCluster.nodes) -}}
{{- fail "redis.topology=externalCluster needs redis.externalCluster.nodes" -}}
{{- end -}}
{{- end -}}

{{/* Floodgate's environment for the chosen store and topology. */}}
{{- define "floodgate.storeEnv" -}}
- name: FLOODGATE_STORE
  value: {{ .Values.store.type | quote }}
{{- if eq .Values.store.type "sqlite" }}
- name: FLOODGATE_SQLITE_PATH
  value: {{ .Values.store.sqlite.path | quote }}
- name: FLOODGATE_SQLITE_MAX_KEYS
  value: {{ .Values.store.sqlite.maxKeys | int64 | quote }}
{{- end }}
{{- if eq .Values.store.type "redis" }}
{{- $t := .Values.redis.topology }}
{{- if eq $t "sentinel" }}
{{- $headless := include "floodgate.redisHeadless" . }}
{{- $name := include "floodgate.redisName" . }}
- name: FLOODGATE_REDIS_SENTINELS
  value: {{ printf "%s-0.%s:26379,%s-1.%s:26379,%s-2.%s:26379" $name $headless $name $headless $name $headless | quote }}
- name: FLOODGATE_REDIS_MASTER_NAME
  value: {{ .Values.redis.bundled.masterName | quote }}
- name: FLOODGATE_REDIS_URL
  value: "redis://unused:6379/0"
{{- if include "floodgate.redisAuth" . }}
# The bundled Sentinels require the Redis password too.
- name: FLOODGATE_REDIS_SENTINEL_PASSWORD_FILE
  value: {{ include "floodgate.secretFile" "redis" | quote }}
{{- end }}
{{- else if eq $t "standalone" }}
- name: FLOODGATE_REDIS_URL
  value: {{ printf "redis://%s-0.%s:6379/0" (include "floodgate.redisName" .) (include "floodgate.redisHeadless" .) | quote }}
{{- else if eq $t "external" }}
- name: FLOODGATE_REDIS_URL
  value: {{ .Values.redis.external.url | quote }}
{{- else if eq $t "externalSentinel" }}
- name: FLOODGATE_REDIS_SENTINELS
  value: {{ join "," .Values.redis.externalSentinel.sentinels | quote }}
- name: FLOODGATE_REDIS_MASTER_NAME
  value: {{ .Values.redis.externalSentinel.masterName | quote }}
- name: FLOODGATE_REDIS_URL
  value: "redis://unused:6379/0"
{{- if include "floodgate.sentinelAuth" . }}
- name: FLOODGATE_REDIS_SENTINEL_PASSWORD_FILE
  value: {{ include "floodgate.secretFile" "sentinel" | quote }}
{{- end }}
{{- else if eq $t "externalCluster" }}
- name: FLOODGATE_REDIS_CLUSTER_NODES
  value: {{ join "," .Values.redis.externalCluster.nodes | quote }}
- name: FLOODGATE_REDIS_URL
  value: "redis://unused:6379/0"
{{- end }}
{{- if include "floodgate.redisAuth" . }}
- name: FLOODGATE_REDIS_PASSWORD_FILE
  value: {{ include "floodgate.secretFile" "redis" | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Where a secret is mounted as a file for Floodgate (read again when the Secret changes):
redis, sentinel or admin. */}}
{{- define "floodgate.secretFile" -}}
/etc/floodgate/secrets/{{ . }}/{{ include "floodgate.secretFileName" . }}
{{- end -}}

{{- define "floodgate.secretFileName" -}}
{{- index (dict "redis" "redis-password" "sentinel" "sentinel-password" "admin" "admin-key") . -}}
{{- end -}}

{{/* Whether Floodgate needs the external Sentinels' own password. */}}
{{- define "floodgate.sentinelAuth" -}}
{{- $s := .Values.redis.externalSentinel -}}
{{- if and (eq .Values.store.type "redis") (eq .Values.redis.topology "externalSentinel") (or $s.sentinelPassword $s.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/* The secrets Floodgate reads, each as (name, Secret, key): mounted as files, so that they
sit in neither the environment nor the process list, and follow the Secret when it changes. */}}
{{- define "floodgate.secretFiles" -}}
{{- $files := list -}}
{{- if include "floodgate.redisAuth" . -}}
{{- $files = append $files (list "redis" (include "floodgate.redisPasswordSecret" .) (include "floodgate.redisPasswordKey" .)) -}}
{{- end -}}
{{- if include "floodgate.sentinelAuth" . -}}
{{- $s := .Values.redis.externalSentinel -}}
{{- $files = append $files (list "sentinel" (default (include "floodgate.secretName" .) $s.existingSecret) (ternary $s.existingSecretKey "sentinel-password" (not (empty $s.existingSecret)))) -}}
{{- end -}}
{{- if .Values.admin.enabled -}}
{{- $files = append $files (list "admin" (include "floodgate.adminSecret" .) (include "floodgate.adminKey" .)) -}}
{{- end -}}
{{- toJson $files -}}
{{- end -}}

{{/* The bundled Redis nodes' host names, first (the initial master) first. */}}
{{- define "floodgate.redisNodes" -}}
{{- $name := include "floodgate.redisName" . -}}
{{- $headless := include "floodgate.redisHeadless" . -}}
{{- $nodes := list -}}
{{- range $i := until (int (include "floodgate.bundledReplicas" .)) -}}
{{- $nodes = append $nodes (printf "%s-%d.%s.%s.svc.%s" $name $i $headless $.Release.Namespace $.Values.clusterDomain) -}}
{{- end -}}
{{- join " " $nodes -}}
{{- end -}}

{{/* Environment of the bundled Redis and Sentinel containers (read by scripts/*.sh). */}}
{{- define "floodgate.redisEnv" -}}
{{- $headless := include "floodgate.redisHeadless" . -}}
{{- $b := .Values.redis.bundled -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: MY_HOST
  value: "$(POD_NAME).{{ $headless }}.{{ .Release.Namespace }}.svc.{{ .Values.clusterDomain }}"
- name: REDIS_NODES
  value: {{ include "floodgate.redisNodes" . | quote }}
- name: MASTER_NAME
  value: {{ $b.masterName | quote }}
- name: QUORUM
  value: {{ $b.sentinel.quorum | quote }}
- name: DOWN_AFTER_MS
  value: {{ $b.sentinel.downAfterMilliseconds | quote }}
- name: FAILOVER_TIMEOUT_MS
  value: {{ $b.sentinel.failoverTimeout | quote }}
- name: MAXMEMORY
  value: {{ $b.maxmemory | quote }}
- name: MAXMEMORY_POLICY
  value: {{ $b.maxmemoryPolicy | quote }}
- name: PERSISTENCE
  value: {{ ternary "yes" "no" $b.persistence.enabled | quote }}
{{- if include "floodgate.redisAuth" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "floodgate.redisPasswordSecret" . }}
      key: {{ include "floodgate.redisPasswordKey" . }}
- name: SENTINEL_REQUIRE_PASSWORD
  value: "yes"
{{- end }}
{{- if ne .Values.redis.topology "sentinel" }}
# Standalone: no Sentinels to ask; the one node is master.
- name: SENTINEL_PORT
  value: "1"
{{- end }}
{{- end -}}
