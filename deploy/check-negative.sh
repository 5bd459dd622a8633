#!/usr/bin/env bash
# Negative tests of deploy/check.sh: each deploy/tests/broken-*.yaml is a values file that
# helm renders but that must not pass the checks (a CRD schema violation, a NATS subchart key
# that does not exist, a manifest invalid at the lowest Kubernetes version the chart declares).
# Its `# expect: REGEX` line is what the failure must say. Run by deploy/check.sh after the
# positive checks; alone: deploy/check-negative.sh (tools installed by check.sh).
set -uo pipefail
cd "$(dirname "$0")/.."

failures=0
count=0
for values in deploy/tests/broken-*.yaml; do
  count=$((count + 1))
  expect=$(sed -n 's/^# expect: //p' "$values")
  if [ -z "$expect" ]; then
    echo "NEGATIVE TEST BROKEN: $values has no '# expect: REGEX' line" >&2
    failures=$((failures + 1)); continue
  fi
  log=$(mktemp)
  if bash deploy/check.sh --chart-only -f "$values" >"$log" 2>&1; then
    echo "NOT REFUSED: $values passed deploy/check.sh" >&2
    failures=$((failures + 1))
  elif ! grep -Eq -- "$expect" "$log"; then
    echo "REFUSED FOR ANOTHER REASON: $values (expected /$expect/):" >&2
    grep -E 'FAIL|ERROR|Error' "$log" | head -n 5 | sed 's/^/    /' >&2
    failures=$((failures + 1))
  else
    printf 'refused as expected: %s\n' "$values"
    grep -Em 2 -- "$expect" "$log" | cut -c1-220 | sed 's/^/    /'
    grep -m 1 '^FAIL' "$log" | cut -c1-220 | sed 's/^/    /'
  fi
  rm -f "$log"
done
if [ "$failures" -gt 0 ]; then
  echo "FAIL: $failures of $count negative tests" >&2
  exit 1
fi
echo "all $count negative tests refused as expected"
