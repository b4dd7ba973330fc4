{{/* Names: <release>-<route>, e.g. streamer-intent. */}}
{{- define "streamer.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamer.routeName" -}}
{{- printf "%s-%s" (include "streamer.fullname" .root) .route | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamer.selectorLabels" -}}
app.kubernetes.io/name: streamer
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .route }}
{{- end -}}

{{- define "streamer.labels" -}}
{{ include "streamer.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
streamer/accelerator: {{ .root.Values.accelerator }}
{{- end -}}

{{- define "streamer.kind" -}}
{{- if eq .Values.membership "static" -}}StatefulSet{{- else -}}Deployment{{- end -}}
{{- end -}}

{{- define "streamer.groupId" -}}
{{- printf "%s-%s" .root.Values.kafka.groupPrefix .route -}}
{{- end -}}

{{/* Worker processes per pod: one per core (cpu), GPU (nvidia) or NeuronCore (neuron). */}}
{{- define "streamer.workers" -}}
{{- $acc := index .Values.accelerators .Values.accelerator -}}
{{- if eq .Values.accelerator "nvidia" -}}{{ $acc.gpus }}
{{- else if eq .Values.accelerator "neuron" -}}{{ $acc.neuronCores }}
{{- else -}}{{ $acc.workers }}
{{- end -}}
{{- end -}}

{{/*
KEDA's Kafka scaler sums the lag over all partitions of the topic and the HPA runs
ceil(total lag / lagThreshold) replicas (keda-docs #1595): the threshold is the committed lag
ONE replica may hold and still meet its budget. A replica serving targetTps records/s keeps
targetTps x commit interval records done-but-uncommitted, and a backlog it drains within the
P99 budget is at most targetTps x budget: threshold = ceil(targetTps x (budget + commit) / 1000).
*/}}
{{- define "streamer.lagThreshold" -}}
{{- $v := .root.Values -}}
{{- if $v.autoscaling.lagThreshold -}}
{{- $v.autoscaling.lagThreshold | int -}}
{{- else -}}
{{- $tps := index .spec.targetTps $v.accelerator | float64 -}}
{{- $windowMs := addf .spec.p99TargetMs $v.commitIntervalMs -}}
{{- ceil (divf (mulf $tps $windowMs) 1000.0) | int -}}
{{- end -}}
{{- end -}}

{{/* Refuse settings that cannot work, with the reason. */}}
{{- define "streamer.check" -}}
{{- if not (has .Values.accelerator (list "cpu" "nvidia" "neuron")) -}}
{{- fail (printf "accelerator must be cpu, nvidia or neuron, not %q" .Values.accelerator) -}}
{{- end -}}
{{- if not (has .Values.membership (list "static" "dynamic")) -}}
{{- fail (printf "membership must be static or dynamic, not %q" .Values.membership) -}}
{{- end -}}
{{- if lt (int .Values.terminationGraceMarginSeconds) 1 -}}
{{- fail "terminationGraceMarginSeconds must be >= 1: the pod must outlive its drain deadline" -}}
{{- end -}}
{{- if or (lt (int .Values.sessionTimeoutMs) 6000) (gt (int .Values.sessionTimeoutMs) 1800000) -}}
{{- fail "sessionTimeoutMs must lie within the broker's default group.min/max.session.timeout.ms (6000..1800000)" -}}
{{- end -}}
{{- range $name, $route := .Values.routes -}}
{{- if lt (int $route.minReplicas) 1 -}}
{{- fail (printf "routes.%s.minReplicas must be >= 1: KEDA cannot wake a group scaled to zero that has not committed" $name) -}}
{{- end -}}
{{- if gt (int $route.maxReplicas) (int $route.partitions) -}}
{{- fail (printf "routes.%s.maxReplicas (%d) must not exceed its partitions (%d): extra consumers sit idle" $name (int $route.maxReplicas) (int $route.partitions)) -}}
{{- end -}}
{{- if lt (int $route.maxReplicas) (int $route.minReplicas) -}}
{{- fail (printf "routes.%s.maxReplicas must be >= minReplicas" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
