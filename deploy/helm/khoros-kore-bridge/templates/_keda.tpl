{{/*
The WORKER_CONCURRENCY of a pool: its own env wins over worker.concurrency.
Call with (dict "root" $ "pool" $pool).
*/}}
{{- define "kkb.poolConcurrency" -}}
{{- $env := .pool.env | default dict -}}
{{- int (default .root.Values.worker.concurrency (get $env "WORKER_CONCURRENCY")) -}}
{{- end -}}

{{/*
Outstanding events per replica at which a pool gets one more replica (KEDA AverageValue
target): backlogPerReplica, or WORKER_CONCURRENCY x drainSeconds / handleSeconds, i.e. what one
replica finishes in drainSeconds when an event takes handleSeconds.
*/}}
{{- define "kkb.backlogPerReplica" -}}
{{- $a := .pool.autoscaling -}}
{{- if gt (int $a.backlogPerReplica) 0 -}}
{{- int $a.backlogPerReplica -}}
{{- else -}}
{{- $c := include "kkb.poolConcurrency" . | float64 -}}
{{- max 1 (int (divf (mulf $c (float64 $a.drainSeconds)) (float64 $a.handleSeconds))) -}}
{{- end -}}
{{- end -}}

{{/*
KEDA ScaledObject of one worker pool, scaled on the pool's own work, not per partition
consumer: a pool runs one durable consumer per (event type, partition), and what one more
replica relieves is the pool's total, so the chart sums it in one Prometheus query per signal
(a pool has two triggers whatever PARTITIONS is):
- backlog: events of the pool's event types not yet finished, pending + ack pending summed
  over the pool's consumers (the scheduler's jetstream_consumer_* gauges; max over the
  scheduler replicas, which all report the same value). Target per replica:
  kkb.backlogPerReplica, so replicas = backlog / (per-replica throughput x drain time).
- in flight: events the pool's replicas handle right now (worker_in_flight, labelled `pool`
  by the chart's ServiceMonitor). Target per replica: inFlightUtilization % of
  WORKER_CONCURRENCY, so a pool whose permits are all busy grows before a backlog shows.
The HPA KEDA drives takes the larger of the two. Call with
(dict "root" $ "pool" $pool "name" $deploymentName "ctx" $ctx).
*/}}
{{- define "kkb.scaledObject" -}}
{{- $root := .root -}}
{{- $pool := .pool -}}
{{- $keda := $root.Values.keda -}}
{{- $a := $pool.autoscaling -}}
{{- $ns := $root.Release.Namespace -}}
{{- $types := join "|" $pool.eventTypes -}}
{{- $extra := ternary (printf ",%s" $keda.extraMatchers) "" (ne $keda.extraMatchers "") -}}
{{- $sel := printf "namespace=%q,event_type=~%q%s" $ns $types $extra -}}
{{- $backlog := printf "(sum(max by (stream, consumer) (jetstream_consumer_pending{%s})) or vector(0)) + (sum(max by (stream, consumer) (jetstream_consumer_ack_pending{%s})) or vector(0))" $sel $sel -}}
{{- $inFlight := printf "sum(worker_in_flight{namespace=%q,pool=%q%s}) or vector(0)" $ns $pool.name $extra -}}
{{- $concurrency := include "kkb.poolConcurrency" . | int -}}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ .name }}
  labels:
    {{- include "kkb.labels" .ctx | nindent 4 }}
  annotations:
    # What one replica is expected to take (README, "Scale a worker pool").
    khoros-kore-bridge/worker-concurrency: {{ $concurrency | quote }}
    khoros-kore-bridge/backlog-per-replica: {{ include "kkb.backlogPerReplica" . | quote }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ .name }}
  pollingInterval: {{ $keda.pollingInterval }}
  cooldownPeriod: {{ $keda.cooldownPeriod }}
  minReplicaCount: {{ $a.minReplicas }}
  maxReplicaCount: {{ $a.maxReplicas }}
  {{- with $keda.advanced }}
  advanced:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  triggers:
    - type: prometheus
      name: backlog
      metricType: AverageValue
      metadata:
        serverAddress: {{ required "keda.prometheusServerAddress is required with keda.enabled (KEDA reads the pool's backlog from Prometheus)" $keda.prometheusServerAddress | quote }}
        query: {{ $backlog | quote }}
        threshold: {{ include "kkb.backlogPerReplica" . | quote }}
        ignoreNullValues: "true"
      {{- with $keda.authenticationRef }}
      authenticationRef:
        name: {{ . }}
      {{- end }}
    {{- if gt (int $a.inFlightUtilization) 0 }}
    - type: prometheus
      name: in-flight
      metricType: AverageValue
      metadata:
        serverAddress: {{ $keda.prometheusServerAddress | quote }}
        query: {{ $inFlight | quote }}
        threshold: {{ max 1 (div (mul $concurrency (int $a.inFlightUtilization)) 100) | quote }}
        ignoreNullValues: "true"
      {{- with $keda.authenticationRef }}
      authenticationRef:
        name: {{ . }}
      {{- end }}
    {{- end }}
{{- end -}}
