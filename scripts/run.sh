#!/usr/bin/env bash
# `make run`: migrate, load the demo, print the URL and a demo admin key, then serve.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${VENV_BIN:-.venv/bin}
export CCM_DATA_DIR=${CCM_DATA_DIR:-./var}
host=${CCM_HOST:-127.0.0.1}
port=${CCM_PORT:-8000}
mkdir -p "$CCM_DATA_DIR"

# A demo admin key, made once and kept in the data dir, so the printed key keeps working across runs.
key_file="$CCM_DATA_DIR/demo-admin-key"
if [ ! -s "$key_file" ]; then
  (umask 077 && "$bin/python" -c 'import secrets; print("ccm_demo_" + secrets.token_urlsafe(32))' > "$key_file")
fi
export CCM_ADMIN_API_KEY=${CCM_ADMIN_API_KEY:-$(cat "$key_file")}

"$bin/ccm" db upgrade
"$bin/ccm" demo

cat <<MSG

  ccm is starting on http://$host:$port
  API docs:      http://$host:$port/docs
  Demo admin key (keep it private): $CCM_ADMIN_API_KEY
  Try:  curl -H "Authorization: Bearer $CCM_ADMIN_API_KEY" http://$host:$port/v1/customers

MSG
exec "$bin/ccm" serve --host "$host" --port "$port"
