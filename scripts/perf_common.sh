# Shared by the scripts/perf_*.sh measurement scripts (sourced, after `out` and `work` are set):
# `step NAME SECONDS COMMAND...` runs a bounded, logged step whose failure does not stop the others, and `reidctl`
# is a command (timeout cannot run a shell function) that runs this tree's CLI with the current python3.
mkdir -p "$out" "$work/bin"
step() {
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "$name: exit $? after $(( SECONDS - started )) s" | tee -a "$out/steps.txt"
}
printf '#!/bin/sh\nexec python3 -m reidctl "$@"\n' >"$work/bin/reidctl"
chmod +x "$work/bin/reidctl"
PATH="$work/bin:$PATH"
