# Shared by the scripts/perf_*.sh measurement scripts (sourced, after `out` and `work` are set):
# `step NAME SECONDS COMMAND...` runs a bounded, logged step whose failure does not stop the others;
# `load_checkpoints` writes the idle/crowd/worst checkpoints into $work once (LOAD_ARGS: more options); and `reidctl`
# is a command (timeout cannot run a shell function) that runs this tree's CLI with the current python3.
mkdir -p "$out" "$work/bin"
step() {
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "$name: exit $? after $(( SECONDS - started )) s" | tee -a "$out/steps.txt"
}
load_checkpoints() {
  compgen -G "$work/*_worst.pth.tar" >/dev/null && return  # a second run in the same work directory reuses them
  # shellcheck disable=SC2086  # LOAD_ARGS holds several options
  step load_checkpoints 240 python3 scripts/make_load_checkpoints.py --output-dir "$work" ${LOAD_ARGS:-}
}
printf '#!/bin/sh\nexec python3 -m reidctl "$@"\n' >"$work/bin/reidctl"
chmod +x "$work/bin/reidctl"
PATH="$work/bin:$PATH"
