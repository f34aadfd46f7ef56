{{/* vim: set filetype=mustache: */}}

{{/* The chart name, or nameOverride. */}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name: fullnameOverride, else <release>-<name> (the release name alone
when it already contains the chart name). At most 52 characters: pod names
(<fullname>-<ordinal>) become node ids and Kafka topic names
(<downlink topic>.inbox.<node id>), and a StatefulSet's pods carry a
controller-revision-hash label built from the name.
*/}}
{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart name and version, for the helm.sh/chart label. */}}
{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels; "component" is broker, announcer, print-dispatcher or scan-processor. */}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Standard labels of every resource: include "herald.labels" (dict "ctx" $ "component" "broker"). */}}
{{- define "herald.labels" -}}
helm.sh/chart: {{ include "herald.chart" .ctx }}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ include "herald.imageTag" .ctx | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: herald
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels of pod templates: the standard labels without helm.sh/chart, so that a
new chart version alone (a dashboard or an alert changed) does not roll every
node and reconnect the fleet. The version label follows the image tag, whose
change rolls the pods anyway.
*/}}
{{- define "herald.podLabels" -}}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ include "herald.imageTag" .ctx | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: herald
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "herald.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag | toString -}}
{{- end -}}

{{/* repository:tag, or repository@digest. */}}
{{- define "herald.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "herald.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{- define "herald.consumersImage" -}}
{{- $c := .Values.consumers.image -}}
{{- if or $c.repository $c.tag -}}
{{- printf "%s:%s" (default .Values.image.repository $c.repository) (default (include "herald.imageTag" .) $c.tag) -}}
{{- else -}}
{{- include "herald.image" . -}}
{{- end -}}
{{- end -}}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Secret and ConfigMap names. */}}
{{- define "herald.fleetKeySecretName" -}}
{{- default (printf "%s-fleet-key" (include "herald.fullname" .)) .Values.fleetKey.existingSecret -}}
{{- end -}}
{{- define "herald.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "herald.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}
{{- define "herald.revocationConfigMapName" -}}
{{- default (printf "%s-revocation" (include "herald.fullname" .)) .Values.revocation.existingConfigMap -}}
{{- end -}}

{{/* "device" or "open": broker.auth.mode as configured (Herald's default: device). */}}
{{- define "herald.authMode" -}}
{{- dig "broker" "auth" "mode" "device" (.Values.config | default dict) -}}
{{- end -}}

{{/* librdkafka security options shared by every Kafka client (a dict, as YAML). */}}
{{- define "herald.kafkaSecurityOptions" -}}
{{- $o := dict -}}
{{- $k := .Values.kafka -}}
{{- if $k.securityProtocol -}}
{{- $_ := set $o "security.protocol" $k.securityProtocol -}}
{{- else if $k.sasl.enabled -}}
{{- $_ := set $o "security.protocol" "sasl_ssl" -}}
{{- end -}}
{{- if $k.sasl.enabled -}}
{{- $_ := set $o "sasl.mechanism" $k.sasl.mechanism -}}
{{- end -}}
{{- if $k.tls.caSecret -}}
{{- $_ := set $o "ssl.ca.location" (printf "/etc/herald/kafka-ca/%s" $k.tls.caKey) -}}
{{- end -}}
{{- toYaml $o -}}
{{- end -}}

{{/*
herald.toml as a dict (YAML): the chart's defaults, then .Values.config over them.
*/}}
{{- define "herald.configDict" -}}
{{- $broker := dict "listen" "0.0.0.0:1883" -}}
{{- $auth := dict -}}
{{- if eq (include "herald.authMode" .) "device" -}}
{{- $_ := set $auth "fleet_key_file" (printf "/etc/herald/fleet-key/%s" .Values.fleetKey.secretKey) -}}
{{- end -}}
{{- if .Values.revocation.enabled -}}
{{- $_ := set $auth "revocation_file" "/etc/herald/revocation/revoked.txt" -}}
{{- end -}}
{{- $_ := set $broker "auth" $auth -}}
{{- if .Values.tls.enabled -}}
{{- $_ := set $broker "tls" (dict "listen" "0.0.0.0:8883" "cert_path" "/etc/herald/tls/tls.crt" "key_path" "/etc/herald/tls/tls.key") -}}
{{- end -}}
{{- if .Values.websocket.enabled -}}
{{- $websocket := dict "listen" "0.0.0.0:8083" "path" .Values.websocket.path -}}
{{- if .Values.tls.enabled -}}
{{- $_ := set $websocket "tls_listen" "0.0.0.0:8084" -}}
{{- end -}}
{{- $_ := set $broker "websocket" $websocket -}}
{{- end -}}
{{- if .Values.proxyProtocol.enabled -}}
{{- $_ := set $broker "proxy_protocol" true -}}
{{- end -}}
{{- $kafka := dict "bootstrap_servers" .Values.kafka.bootstrapServers -}}
{{- $security := include "herald.kafkaSecurityOptions" . | fromYaml -}}
{{- if $security -}}
{{- $_ := set $kafka "producer_options" (deepCopy $security) -}}
{{- $_ := set $kafka "consumer_options" (deepCopy $security) -}}
{{- end -}}
{{- $defaults := dict "broker" $broker "kafka" $kafka "http" (dict "listen" "0.0.0.0:9090") "log" (dict "format" "json") -}}
{{- toYaml (mergeOverwrite $defaults (deepCopy (.Values.config | default dict))) -}}
{{- end -}}

{{/* consumers.toml as a dict (YAML). */}}
{{- define "herald.consumersConfigDict" -}}
{{- $herald := include "herald.configDict" . | fromYaml -}}
{{- $kafka := dict "bootstrap_servers" .Values.kafka.bootstrapServers -}}
{{- with (dig "kafka" "downlink" "topic" "" $herald) }}{{ $_ := set $kafka "downlink_topic" . }}{{ end -}}
{{- with (dig "kafka" "downlink" "receipts_topic" "" $herald) }}{{ $_ := set $kafka "receipts_topic" . }}{{ end -}}
{{- $security := include "herald.kafkaSecurityOptions" . | fromYaml -}}
{{- if $security -}}
{{- $_ := set $kafka "producer_options" (deepCopy $security) -}}
{{- $_ := set $kafka "consumer_options" (deepCopy $security) -}}
{{- end -}}
{{- $defaults := dict "http_listen" "0.0.0.0:9091" "kafka" $kafka -}}
{{- toYaml (mergeOverwrite $defaults (deepCopy (.Values.consumers.config | default dict))) -}}
{{- end -}}

{{/* The port of a "host:port" listen address. */}}
{{- define "herald.port" -}}
{{- $p := regexFind "[0-9]+$" (toString .) -}}
{{- if not $p -}}{{- fail (printf "cannot read a port in the listen address %q" (toString .)) -}}{{- end -}}
{{- $p -}}
{{- end -}}

{{/*
A duration as humantime writes it ("20s", "1m30s", "500ms", "2h") in whole
seconds, rounded up. Anything else fails the render, naming the value.
*/}}
{{- define "herald.durationSeconds" -}}
{{- $s := . | toString | trim -}}
{{- if not (regexMatch "^([0-9]+ *(ms|msec|s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours) *)+$" $s) -}}
{{- fail (printf "cannot read the duration %q: write it like \"20s\", \"1m30s\" or \"500ms\"" $s) -}}
{{- end -}}
{{- $ms := 0 -}}
{{- range regexFindAll "[0-9]+ *[a-z]+" $s -1 -}}
{{- $n := regexFind "^[0-9]+" . | atoi -}}
{{- $u := regexFind "[a-z]+$" . -}}
{{- if has $u (list "ms" "msec") -}}{{- $ms = add $ms $n -}}
{{- else if has $u (list "s" "sec" "secs" "second" "seconds") -}}{{- $ms = add $ms (mul $n 1000) -}}
{{- else if has $u (list "m" "min" "mins" "minute" "minutes") -}}{{- $ms = add $ms (mul $n 60000) -}}
{{- else -}}{{- $ms = add $ms (mul $n 3600000) -}}
{{- end -}}
{{- end -}}
{{- div (add $ms 999) 1000 -}}
{{- end -}}

{{/* broker.drain_period + broker.shutdown_grace in seconds (Herald's defaults 20 s, 10 s). */}}
{{- define "herald.drainSeconds" -}}
{{- $c := include "herald.configDict" . | fromYaml -}}
{{- $drain := include "herald.durationSeconds" (dig "broker" "drain_period" "20s" $c) | atoi -}}
{{- $grace := include "herald.durationSeconds" (dig "broker" "shutdown_grace" "10s" $c) | atoi -}}
{{- add $drain $grace -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds: the drain (drain_period + shutdown_grace), then
Herald's own bound on the rest of the shutdown (shutdown_grace + 30 s,
herald/src/main.rs exit_if_stuck), plus a margin.
*/}}
{{- define "herald.terminationGracePeriodSeconds" -}}
{{- if not (kindIs "invalid" .Values.terminationGracePeriodSeconds) -}}
{{- .Values.terminationGracePeriodSeconds | int64 -}}
{{- else -}}
{{- $c := include "herald.configDict" . | fromYaml -}}
{{- $grace := include "herald.durationSeconds" (dig "broker" "shutdown_grace" "10s" $c) | atoi -}}
{{- add (include "herald.drainSeconds" . | atoi) $grace 30 (.Values.terminationGraceMarginSeconds | int64) -}}
{{- end -}}
{{- end -}}

{{/*
TOML. herald.toml / consumers.toml are rendered by these templates rather than
toToml: values arrive as float64 (1048576 would print as 1.048576e+06), keys
with dots (librdkafka options) need quotes, and a null drops a key.
*/}}
{{- define "herald.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "herald.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (float64 $v) (floor $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "uint64" $v) -}}{{ $v }}
{{- else if kindIs "slice" $v -}}
[{{- range $i, $e := $v -}}{{- if $i -}}, {{ end -}}{{- include "herald.tomlValue" $e -}}{{- end -}}]
{{- else if kindIs "map" $v -}}
{ {{- $first := true -}}
{{- range $k := keys $v | sortAlpha -}}
{{- $e := get $v $k -}}
{{- if not (kindIs "invalid" $e) -}}
{{- if not $first -}},{{- end -}}
{{- $first = false }} {{ include "herald.tomlKey" $k }} = {{ include "herald.tomlValue" $e -}}
{{- end -}}
{{- end }} }
{{- else -}}
{{- fail (printf "cannot write %v (%s) as TOML" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* A table: (dict "table" $map "path" "kafka.producer_options"); path "" is the root. */}}
{{- define "herald.tomlTable" -}}
{{- $t := .table -}}
{{- $path := .path -}}
{{- if $path }}
[{{ $path }}]
{{- end -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := get $t $k -}}
{{- if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) }}
{{ include "herald.tomlKey" $k }} = {{ include "herald.tomlValue" $v }}
{{- end -}}
{{- end -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := get $t $k -}}
{{- if kindIs "map" $v -}}
{{- $sub := include "herald.tomlKey" $k -}}
{{- if $path -}}{{- $sub = printf "%s.%s" $path $sub -}}{{- end }}
{{ include "herald.tomlTable" (dict "table" $v "path" $sub) }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The PromQL selector (without braces) of Herald's and the services' series. */}}
{{- define "herald.heraldSelector" -}}
{{- default (printf "namespace=%q, job=%q" .Release.Namespace (printf "%s-metrics" (include "herald.fullname" .))) .Values.prometheusRule.heraldSelector -}}
{{- end -}}
{{- define "herald.consumersSelector" -}}
{{- default (printf "namespace=%q, job=~%q" .Release.Namespace (printf "%s-(announcer|print-dispatcher|scan-processor)-metrics" (include "herald.fullname" .))) .Values.prometheusRule.consumersSelector -}}
{{- end -}}
{{- define "herald.podSelector" -}}
{{- default (printf "namespace=%q, pod=~%q" .Release.Namespace (printf "%s-[0-9]+" (include "herald.fullname" .))) .Values.prometheusRule.podSelector -}}
{{- end -}}

{{/* The consumer services: values key, service argument, component name. */}}
{{- define "herald.consumerServices" -}}
- key: announcer
  service: announcer
- key: printDispatcher
  service: print-dispatcher
- key: scanProcessor
  service: scan-processor
{{- end -}}
