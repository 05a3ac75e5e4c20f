{{/* Chart name, truncated to 63 characters. */}}
{{- define "peat-mesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name: the release name if it already contains the chart name. */}}
{{- define "peat-mesh.fullname" -}}
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

{{- define "peat-mesh.gatewayName" -}}
{{- printf "%s-gateway" (include "peat-mesh.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "peat-mesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels shared by every pod of the release (mesh and gateway). The headless Service selects
on these, and the EndpointSlice controller copies the Service's labels (see "peat-mesh.labels") onto
the slices the nodes watch.
*/}}
{{- define "peat-mesh.selectorLabels" -}}
app: peat-mesh
app.kubernetes.io/name: {{ include "peat-mesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "peat-mesh.labels" -}}
helm.sh/chart: {{ include "peat-mesh.chart" . }}
{{ include "peat-mesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The EndpointSlice label selector the nodes use: unique to the release by default. */}}
{{- define "peat-mesh.labelSelector" -}}
{{- if .Values.kubernetes.labelSelector }}
{{- .Values.kubernetes.labelSelector }}
{{- else }}
{{- printf "app=peat-mesh,app.kubernetes.io/instance=%s" .Release.Name }}
{{- end }}
{{- end }}

{{/* The discovery.k8s.io version the nodes use; "auto" picks v1 when the cluster serves it. */}}
{{- define "peat-mesh.endpointSliceApiVersion" -}}
{{- if eq .Values.kubernetes.apiVersion "auto" }}
{{- if .Capabilities.APIVersions.Has "discovery.k8s.io/v1/EndpointSlice" }}discovery.k8s.io/v1{{ else }}discovery.k8s.io/v1beta1{{ end }}
{{- else }}
{{- .Values.kubernetes.apiVersion }}
{{- end }}
{{- end }}

{{- define "peat-mesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "peat-mesh.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name and key of the Secret holding the formation secret; fails when none is configured. */}}
{{- define "peat-mesh.secretName" -}}
{{- include "peat-mesh.validateSecret" . }}
{{- if .Values.existingSecret }}{{ .Values.existingSecret }}{{ else }}{{ include "peat-mesh.fullname" . }}{{ end }}
{{- end }}

{{- define "peat-mesh.secretKey" -}}
{{- if .Values.existingSecret }}{{ .Values.existingSecretKey }}{{ else }}formation-secret{{ end }}
{{- end }}

{{- define "peat-mesh.validateSecret" -}}
{{- if and (not (trim .Values.formationSecret)) (not .Values.existingSecret) }}
{{- fail "peat-mesh: no formation secret. Set formationSecret (--set formationSecret=$(openssl rand -base64 32)) or existingSecret (the name of a Secret with key formation-secret); an empty secret must never deploy" }}
{{- end }}
{{- if and (trim .Values.formationSecret) .Values.existingSecret }}
{{- fail "peat-mesh: set either formationSecret or existingSecret, not both" }}
{{- end }}
{{- end }}

{{/*
The StatefulSet for mesh pods or for gateway pods.
Call with (dict "root" $ "gateway" true|false).
*/}}
{{- define "peat-mesh.statefulset" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $gw := .gateway -}}
{{- $name := ternary (include "peat-mesh.gatewayName" $root) (include "peat-mesh.fullname" $root) $gw -}}
{{- $component := ternary "gateway" "mesh" $gw -}}
{{- $peers := ternary (concat $v.staticPeers $v.gateway.staticPeers) $v.staticPeers $gw -}}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $name }}
  labels:
    {{- include "peat-mesh.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
spec:
  serviceName: {{ include "peat-mesh.fullname" $root }}
  replicas: {{ ternary $v.gateway.replicas $v.replicaCount $gw }}
  podManagementPolicy: {{ $v.podManagementPolicy }}
  selector:
    matchLabels:
      {{- include "peat-mesh.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ $component }}
  template:
    metadata:
      labels:
        {{- include "peat-mesh.selectorLabels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $component }}
        {{- if $gw }}
        peat.role: federation-gateway
        {{- end }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- if not $v.existingSecret }}
        checksum/secret: {{ $v.formationSecret | sha256sum }}
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "peat-mesh.serviceAccountName" $root }}
      automountServiceAccountToken: true
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.podSecurityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: peat-mesh-node
          image: "{{ $v.image.repository }}:{{ $v.image.tag | default $root.Chart.AppVersion }}"
          imagePullPolicy: {{ $v.image.pullPolicy }}
          ports:
            - name: broker
              containerPort: {{ $v.brokerPort }}
              protocol: TCP
            - name: sync
              containerPort: {{ $v.irohBindPort }}
              protocol: UDP
          env:
            - name: PEAT_FORMATION_SECRET
              valueFrom:
                secretKeyRef:
                  name: {{ include "peat-mesh.secretName" $root }}
                  key: {{ include "peat-mesh.secretKey" $root }}
            - name: HOSTNAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: PEAT_DISCOVERY
              value: {{ $v.discoveryMode | quote }}
            - name: PEAT_DATA_DIR
              value: /data
            - name: TMPDIR
              value: /tmp
            - name: PEAT_BROKER_PORT
              value: {{ $v.brokerPort | quote }}
            - name: PEAT_IROH_BIND_PORT
              value: {{ $v.irohBindPort | quote }}
            {{- if $v.irohRelayUrls }}
            - name: PEAT_IROH_RELAY_URLS
              value: {{ $v.irohRelayUrls | quote }}
            {{- end }}
            {{- if $peers }}
            - name: PEAT_STATIC_PEERS
              value: {{ join "," $peers | quote }}
            {{- end }}
            - name: PEAT_K8S_LABEL_SELECTOR
              value: {{ include "peat-mesh.labelSelector" $root | quote }}
            - name: PEAT_K8S_API_VERSION
              value: {{ include "peat-mesh.endpointSliceApiVersion" $root | quote }}
            - name: PEAT_COMPACTION_ENABLED
              value: {{ $v.compaction.enabled | quote }}
            - name: PEAT_COMPACTION_INTERVAL_SECS
              value: {{ $v.compaction.intervalSecs | quote }}
            - name: PEAT_COMPACTION_THRESHOLD_BYTES
              value: {{ $v.compaction.thresholdBytes | int64 | quote }}
            {{- if $v.compaction.collections }}
            - name: PEAT_COMPACTION_COLLECTIONS
              value: {{ $v.compaction.collections | quote }}
            {{- end }}
            - name: RUST_LOG
              value: {{ $v.rustLog | quote }}
            - name: PEAT_LOG_FORMAT
              value: {{ $v.logFormat | quote }}
            - name: NO_COLOR
              value: "1"
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          livenessProbe:
            httpGet:
              path: /api/v1/health
              port: broker
            {{- toYaml $v.livenessProbe | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /api/v1/ready
              port: broker
            {{- toYaml $v.readinessProbe | nindent 12 }}
          {{- with $v.securityContext }}
          securityContext:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $v.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: data
              mountPath: /data
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            {{- if $v.tmpDir.medium }}
            medium: {{ $v.tmpDir.medium }}
            {{- end }}
            {{- if $v.tmpDir.sizeLimit }}
            sizeLimit: {{ $v.tmpDir.sizeLimit }}
            {{- end }}
        {{- if not $v.persistence.enabled }}
        - name: data
          emptyDir: {}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  {{- if $v.persistence.enabled }}
  volumeClaimTemplates:
    - metadata:
        name: data
        labels:
          {{- include "peat-mesh.selectorLabels" $root | nindent 10 }}
      spec:
        accessModes:
          {{- toYaml $v.persistence.accessModes | nindent 10 }}
        {{- if $v.persistence.storageClass }}
        storageClassName: {{ $v.persistence.storageClass | quote }}
        {{- end }}
        resources:
          requests:
            storage: {{ $v.persistence.size }}
  {{- end }}
{{- end }}
