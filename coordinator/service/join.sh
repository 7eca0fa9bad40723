#!/bin/sh
# fleetfit's one-line join, served by the coordinator (fleetfit serve --install-listen):
#
#   curl -fsSk https://HOST:PORT/join.sh | sh -s -- --token TOKEN [--no-service] [--dry-run] [--device-id ID]
#                                                      [--prefix DIR] [--python PYTHON]
#
# 1. checks that the coordinator presents the fleet CA the token pins (SECRET.FINGERPRINT), before it sends the
#    token or installs anything, and from then on trusts only that CA (curl, pip);
# 2. makes a venv in PREFIX (default ~/.local/share/fleetfit/venv) and installs fleetfit from the coordinator's
#    package index alone (pip's index is the coordinator's; no other index, no find-links, no pip config);
# 3. joins (fleetfit-agent join; skipped when this device's identity already exists);
# 4. installs llama.cpp: the wheel the fleet holds for this class of device, checked here, or a local build from the
#    coordinator's source distribution, checked and then uploaded (python -m fleetfit.agent.llama_wheel);
# 5. writes and starts the systemd unit (unless --no-service; only as root).
# Rerunning it is harmless: each step keeps what is already there. --dry-run prints the steps and does nothing.
set -eu

INSTALL_URL="@INSTALL_URL@"
COORDINATORS="@COORDINATORS@"

token="" dry="" service=yes device_id="" prefix="${FLEETFIT_PREFIX:-$HOME/.local/share/fleetfit}" python="python3"
while [ $# -gt 0 ]; do
  case "$1" in
    --token) token="$2"; shift 2 ;;
    --device-id) device_id="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --no-service) service=""; shift ;;
    --dry-run) dry=yes; shift ;;
    *) echo "join.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$token" ] || { echo "join.sh: --token TOKEN is required (fleetfit token create prints the line)" >&2; exit 2; }
fingerprint="${token#*.}"
case "$fingerprint" in
  "$token"|"") echo "join.sh: the token pins no CA (SECRET.FINGERPRINT): copy the whole line" >&2; exit 2 ;;
esac
venv="$prefix/venv" ca="$prefix/ca.pem"
identity="${FLEETFIT_IDENTITY:-${XDG_CONFIG_HOME:-$HOME/.config}/fleetfit/agent-identity.json}"

began=$(date +%s)
step() { echo "join.sh: [$(( $(date +%s) - began )) s] $*"; }
if [ -n "$dry" ]; then
  step "would check that $INSTALL_URL presents the CA with sha256 $fingerprint, and keep it in $ca"
  step "would make the venv $venv ($python) and pip install fleetfit from $INSTALL_URL/simple/ only"
  step "would join $COORDINATORS (fleetfit-agent join), unless $identity exists"
  step "would install the fleet's llama.cpp wheel for this class of device (checked), or build, check and upload one"
  [ -n "$service" ] && step "would write and start the systemd unit fleetfit-agent.service (root only)"
  exit 0
fi

command -v "$python" >/dev/null || { echo "join.sh: $python not found: install Python 3.10 or later" >&2; exit 2; }
pinned=$(mktemp)
trap 'rm -f "$pinned"' EXIT
# 1. the CA: from the chain the coordinator presents, kept only when its sha256 is the token's (agent/identity.py's
#    fetch_pinned_ca, again here because fleetfit is not installed yet)
step "checking the coordinator's CA (sha256 ${fingerprint%"${fingerprint#????????????????}"}...)"
"$python" - "$INSTALL_URL" "$fingerprint" "$pinned" <<'EOF'
import hashlib, socket, ssl, sys, urllib.parse
url, fingerprint, out = sys.argv[1:4]
parts = urllib.parse.urlsplit(url)
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # checked by fingerprint below
try:
    with socket.create_connection((parts.hostname, parts.port or 443), timeout=15) as raw:
        with context.wrap_socket(raw) as tls:
            if hasattr(tls, "get_unverified_chain"):
                chain = [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)
                         for c in tls.get_unverified_chain()]
            else:
                chain = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in tls._sslobj.get_unverified_chain()]
except OSError as exc:
    sys.exit(f"join.sh: cannot open TLS to {url}: {exc}")
for der in chain:
    if hashlib.sha256(der).hexdigest() == fingerprint:
        open(out, "w").write(ssl.DER_cert_to_PEM_cert(der))
        sys.exit(0)
sys.exit(f"join.sh: the coordinator at {url} does not present the CA this token pins (sha256 {fingerprint[:16]}...): "
         "nothing was sent or installed; check the token and the address")
EOF
mkdir -p "$prefix"  # nothing is written or sent before the CA matched
cp "$pinned" "$ca"

# 2. the venv and fleetfit, from the coordinator's index alone
if ! "$venv/bin/python" -c "import pip" 2>/dev/null; then
  step "making the venv $venv"
  # pip from the wheel Python bundles, installed without compiling (half of ensurepip's time); else ensurepip
  bundled=$("$python" -c 'import ensurepip, glob, os
print((glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl")) or [""])[0])' \
    2>/dev/null || true)
  if [ -n "$bundled" ]; then
    "$python" -m venv --without-pip "$venv"
    PIP_CONFIG_FILE=/dev/null "$venv/bin/python" "$bundled/pip" install -q --no-compile --no-index \
      --disable-pip-version-check "$bundled"
  else
    "$python" -m venv "$venv"
  fi
fi
# pip's configuration is ignored and its CA is the fleet's: REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE) in the environment
# would take precedence over --cert
export PIP_CONFIG_FILE=/dev/null REQUESTS_CA_BUNDLE="$ca"
unset CURL_CA_BUNDLE PIP_CERT PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_NO_INDEX 2>/dev/null || true
pip() {
  "$venv/bin/python" -m pip --disable-pip-version-check --no-input --cert "$ca" "$@" --index-url "$INSTALL_URL/simple/"
}
step "installing fleetfit from $INSTALL_URL/simple/"
pip install -q --no-compile --upgrade --upgrade-strategy only-if-needed fleetfit  # .pyc on first import

# 3. join, once
if [ -e "$identity" ]; then
  step "already joined ($identity): not joining again"
else
  "$venv/bin/fleetfit-agent" join --coordinator "$COORDINATORS" --token "$token" \
    ${device_id:+--device-id "$device_id"} --identity "$identity"
fi

# 4. llama.cpp: the fleet's wheel for this class of device, or a local build that is then shared
"$venv/bin/python" -m fleetfit.agent.llama_wheel --install-url "$INSTALL_URL" --ca "$ca" \
  --identity "$identity"

# 5. the service
if [ -n "$service" ]; then
  if [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null; then
    "$venv/bin/fleetfit-agent" service install --identity "$identity"
    systemctl daemon-reload && systemctl enable --now fleetfit-agent.service
  else
    step "not root, or no systemd: no service written (run as root, or start it yourself: $venv/bin/fleetfit-agent run --identity $identity)"
  fi
fi
step "done: $(cat "$identity" >/dev/null && echo "joined; identity $identity")"
