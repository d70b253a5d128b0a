# Sourced by bench-alloc and bench-leak: the floor of the uprobe hits our
# allocation tracers take per malloc+free pair (malloc's entry and return,
# and one hit in free at an instruction the kernel emulates), measured with
# bpftrace probes that do nothing, so no program on these probes can cost
# less. malloc+0 (a push) stands for the emulated hit in free.

# bpftrace_loop LOOP N PROGRAM: run `LOOP N` (which prints its ns per pair
# on stderr) under the bpftrace PROGRAM; prints that figure (nothing when
# bpftrace failed).
bpftrace_loop() {
    bpftrace -c "$1 $2" -e "$3" 2>&1 | grep -E '^[0-9.]+$' | tail -1 || true
}

# floor_measure LOOP N LIBC: the loop under an empty probe at malloc+0, then
# under empty probes at malloc's entry and return; sets floor_malloc0 and
# floor_mallocret.
floor_measure() {
    floor_malloc0=$(bpftrace_loop "$1" "$2" "uprobe:$3:malloc /0/ { }")
    floor_mallocret=$(bpftrace_loop "$1" "$2" "uprobe:$3:malloc /0/ { } uretprobe:$3:malloc /0/ { }")
}

# floor_report BARE SCRIPT (ns per pair of the bare loop and under the
# peer's script): prints the floor in added ns, and the largest ratio of
# the script's added ns to a tool's that the floor leaves possible.
floor_report() {
    if [ -z "$floor_malloc0" ] || [ -z "$floor_mallocret" ] || [ -z "$2" ] || [ "$2" = NA ]; then
        return 0
    fi
    awk -v t="$2" -v m="$floor_malloc0" -v r="$floor_mallocret" -v b="$1" 'BEGIN {
        floor = (r - b) + (m - b)
        if (floor <= 0) exit
        printf "floor of three empty hits (entry+return, one emulated): %.1f ns added\n", floor
        printf "bpftrace added overhead / that floor: %.1fx (the most any program on these probes could reach)\n", (t-b)/floor }'
}
