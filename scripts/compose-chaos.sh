#!/usr/bin/env bash
# Chaos test of the compose deployment: scripts/compose-test.sh --chaos. During a rate-limited
# run (default 60000 transactions at 1200/s, ~50 s), kills (SIGKILL) and restarts broker and worker
# containers alternately (default 6 events; a broker kill targets the leader of `transactions`;
# never more than one broker down: the next event waits until the killed broker serves again),
# then the audit must PASS. Same options and env as compose-test.sh; overall timeout 600 s.
exec bash "$(dirname "$0")/compose-test.sh" --chaos "$@"
