{{/*
KEDA ScaledObject of one worker pool. KEDA's nats-jetstream trigger reads ONE consumer, while a
pool runs one durable consumer per (event type, partition): `worker-<type>-<partition>`. With
scaler=nats-jetstream the chart writes one trigger per consumer (partitions 0..N-1 of each
event type, at most keda.maxConsumerTriggers per pool); the HPA KEDA drives takes the largest
of the per-trigger replica counts, i.e. it scales on the most backed-up partition. With
scaler=prometheus one trigger reads the sum of jetstream_consumer_pending the scheduler exports.
Call with (dict "root" $ "pool" $pool "name" $deploymentName "ctx" $ctx).
*/}}
{{- define "kkb.scaledObject" -}}
{{- $root := .root -}}
{{- $pool := .pool -}}
{{- $keda := $root.Values.keda -}}
{{- $partitions := int $root.Values.jetstream.partitions -}}
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ .name }}
  labels:
    {{- include "kkb.labels" .ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ .name }}
  pollingInterval: {{ $keda.pollingInterval }}
  cooldownPeriod: {{ $keda.cooldownPeriod }}
  minReplicaCount: {{ $pool.autoscaling.minReplicas }}
  maxReplicaCount: {{ $pool.autoscaling.maxReplicas }}
  triggers:
  {{- if eq $keda.scaler "prometheus" }}
    - type: prometheus
      metadata:
        serverAddress: {{ required "keda.prometheusServerAddress is required with keda.scaler=prometheus" $keda.prometheusServerAddress | quote }}
        # Pending events of the pool's consumers (max over scheduler replicas, which all
        # report the same value), summed: lagThreshold is pending events per replica here.
        query: {{ printf "sum(max by (stream, consumer) (jetstream_consumer_pending{namespace=%q, event_type=~%q}))" $root.Release.Namespace (join "|" $pool.eventTypes) | quote }}
        threshold: {{ $pool.autoscaling.lagThreshold | quote }}
        activationThreshold: {{ $pool.autoscaling.activationLagThreshold | quote }}
  {{- else }}
  {{- $endpoint := $keda.natsMonitoringEndpoint -}}
  {{- if not $endpoint -}}
  {{- if not $root.Values.nats.enabled }}{{ fail "keda.natsMonitoringEndpoint is required with an external NATS (host:port of its monitoring endpoint)" }}{{ end -}}
  {{- /* Headless service: KEDA asks the consumer's leader as <pod>.<endpoint>. */ -}}
  {{- $endpoint = printf "%s-headless.%s.svc.cluster.local:8222" (include "kkb.natsFullname" $root) $root.Release.Namespace -}}
  {{- end -}}
  {{- $count := 0 -}}
  {{- range $type := $pool.eventTypes }}
  {{- $stream := ternary "KORE_REPLIES" "KHOROS_EVENTS" (eq $type "kore_reply") }}
  {{- range $p := until $partitions }}
  {{- if lt $count (int $keda.maxConsumerTriggers) }}
  {{- $count = add1 $count }}
    - type: nats-jetstream
      metadata:
        natsServerMonitoringEndpoint: {{ $endpoint | quote }}
        account: {{ $keda.account | quote }}
        stream: {{ $stream }}
        consumer: {{ printf "worker-%s-%d" $type $p }}
        lagThreshold: {{ $pool.autoscaling.lagThreshold | quote }}
        activationLagThreshold: {{ $pool.autoscaling.activationLagThreshold | quote }}
        useHttps: {{ $keda.useHttps | quote }}
  {{- end }}
  {{- end }}
  {{- end }}
  {{- end }}
{{- end -}}
