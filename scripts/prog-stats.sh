# Sourced by bench-unwind and bench-bpf-cost: the kernel's per-program BPF
# run time (kernel.bpf_stats_enabled=1) of one process's programs, read
# from its fds' fdinfo, so other tracers on the machine are not mixed in.

# prog_stats PID FILE: snapshot the run time and count of process PID's BPF
# programs into FILE, one "name run_time_ns run_cnt" line per program.
prog_stats() {
    local fd id
    for fd in /proc/"$1"/fd/*; do
        [ "$(readlink "$fd" 2>/dev/null)" = "anon_inode:bpf-prog" ] || continue
        id=$(awk '/^prog_id:/ {print $2}' "/proc/$1/fdinfo/${fd##*/}" 2>/dev/null) || continue
        [ -n "$id" ] || continue
        printf '%s %s %s\n' \
            "$(bpftool prog show id "$id" 2>/dev/null |
                awk '{ for (i = 1; i < NF; i++) if ($i == "name") { print $(i + 1); exit } }')" \
            "$(awk '/^run_time_ns:/ {print $2}' "/proc/$1/fdinfo/${fd##*/}" 2>/dev/null)" \
            "$(awk '/^run_cnt:/ {print $2}' "/proc/$1/fdinfo/${fd##*/}" 2>/dev/null)"
    done >"$2"
}

# prog_sample PID FILE: append snapshots of PID's programs to FILE every
# 0.2 s until PID exits (a snapshot taken while it exits may miss some).
prog_sample() {
    : >"$2"
    while kill -0 "$1" 2>/dev/null; do
        prog_stats "$1" "$2.new"
        cat "$2.new" >>"$2"
        sleep 0.2
    done
    rm -f "$2.new"
}

# prog_ns FILE NAME: average ns per run of program NAME in the snapshots
# of FILE (the one with the most runs).
prog_ns() {
    awk -v n="$2" '$1 == n && $3 > c { c = $3; t = $2 }
        END { if (c > 0) printf "%.0f", t / c }' "$1" 2>/dev/null
}
