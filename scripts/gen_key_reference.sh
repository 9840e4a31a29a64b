#!/usr/bin/env bash
# gen_key_reference.sh: rewrites the run-config key tables of docs/USER_GUIDE.md from the key
# table (run/run_config_keys.c) through `effdm finetune --keys`. test_run_config fails when
# they differ. Usage (from the repository root, after building): scripts/gen_key_reference.sh
set -euo pipefail
EFFDM=${EFFDM:-./build/effdm}
GUIDE=docs/USER_GUIDE.md
BEGIN='<!-- BEGIN effdm finetune --keys -->'
END='<!-- END effdm finetune --keys -->'
grep -qF "$BEGIN" "$GUIDE" && grep -qF "$END" "$GUIDE" || { echo "$GUIDE: no $BEGIN / $END markers" >&2; exit 2; }
keys=$(mktemp)
trap 'rm -f "$keys" "$GUIDE.tmp"' EXIT
"$EFFDM" finetune --keys > "$keys"
awk -v b="$BEGIN" -v e="$END" -v f="$keys" '
    $0 == b { print; while ((getline l < f) > 0) print l; skip = 1; next }
    $0 == e { skip = 0 }
    !skip { print }' "$GUIDE" > "$GUIDE.tmp"
mv "$GUIDE.tmp" "$GUIDE"
trap - EXIT
rm -f "$keys"
echo "rewrote the key tables of $GUIDE"
