#!/usr/bin/env bash
# Mint an access token offline, straight from the key ring, and print only the token.
#
#   scripts/mint_token.sh SUBJECT TOOLS AUDIENCE [TTL_SECONDS]
#   TOKEN=$(scripts/mint_token.sh alice add,subtract http://127.0.0.1:9000/mcp 300)
#   curl -H "Authorization: Bearer $TOKEN" ...
#
# TOOLS is comma-separated ('*' = every tool, 'read_*' = every tool starting with read_).
# JWTMCP_KEYS   key ring directory (default: ./keys); created on first use
# JWTMCP_ISSUER the 'iss' claim (default: http://127.0.0.1:8000)
set -euo pipefail

if [ $# -lt 3 ] || [ $# -gt 4 ]; then
  echo "usage: $0 SUBJECT TOOLS AUDIENCE [TTL_SECONDS]" >&2
  exit 2
fi
sub=$1 tools=$2 aud=$3 ttl=${4:-300}
keys=${JWTMCP_KEYS:-keys}

# Prefer an installed 'jwtmcp'; else this checkout's virtualenv.
here=$(cd "$(dirname "$0")/.." && pwd)
if command -v jwtmcp >/dev/null 2>&1; then
  jwtmcp=(jwtmcp)
elif [ -x "$here/.venv/bin/python" ]; then
  jwtmcp=("$here/.venv/bin/python" -m jwtmcp)
else
  jwtmcp=(python3 -m jwtmcp)
fi

if [ ! -f "$keys/ring.json" ]; then
  "${jwtmcp[@]}" keys init --keys "$keys" >&2
fi
exec "${jwtmcp[@]}" mint --keys "$keys" --subject "$sub" --tools "$tools" --audience "$aud" --ttl "$ttl"
