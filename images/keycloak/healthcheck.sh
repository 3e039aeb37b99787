#!/bin/sh
# Healthcheck of dive-offline/keycloak: readiness on the management interface (port 9000 unless
# KC_HTTP_MANAGEMENT_PORT), plain HTTP first, then HTTPS (self-signed accepted) when TLS is on.
port=${KC_HTTP_MANAGEMENT_PORT:-9000}
path=${KC_HTTP_MANAGEMENT_RELATIVE_PATH:-${KC_HTTP_RELATIVE_PATH:-/}}
path=${path%/}/health/ready
curl -fsS -o /dev/null --max-time 4 "http://127.0.0.1:${port}${path}" 2>/dev/null && exit 0
curl -kfsS -o /dev/null --max-time 4 "https://127.0.0.1:${port}${path}" 2>/dev/null && exit 0
exit 1
