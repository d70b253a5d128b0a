/* The syscount map layouts: the only definition; Rust mirrors them with
 * bindgen. Only plain integer types (see bpf/leakd.h). */
#ifndef SYSCOUNT_H
#define SYSCOUNT_H

/* Syscall numbers 0..SYSCOUNT_NR_MAX-1 get a slot of their own in the per-CPU
 * arrays; every other number the kernel reports (x32-ABI calls, which have
 * bit 30 set, and the -1 of a syscall skipped by seccomp or ptrace) is
 * counted in the one extra slot SYSCOUNT_NR_OTHER. x86_64 uses < 512. */
#define SYSCOUNT_NR_MAX 1024
#define SYSCOUNT_NR_OTHER SYSCOUNT_NR_MAX
#define SYSCOUNT_NR_SLOTS (SYSCOUNT_NR_MAX + 1)

/* log2 latency buckets: bucket b counts calls of 2^b..2^(b+1)-1 ns (bucket 0
 * also holds 0 ns); the last bucket holds everything longer (2^47 ns is 39
 * hours). */
#define SYSCOUNT_HIST_BUCKETS 48

/* Per-CPU value, summed over CPUs by user space. */
struct syscount_val {
	__u64 count;        /* calls counted (at entry; at exit with -x/-e) */
	__u64 lat_ns_total; /* time inside the timed calls, with -L/--hist */
	__u64 lat_count;    /* calls timed: those that returned while tracing */
};

/* Key of the hash used when rows are not just "per syscall": per process
 * (-P), process x syscall (--matrix) or per error (-x/-e). Fields that are
 * not part of the grouping are 0. */
struct syscount_key {
	__u32 tgid;
	__u32 nr;  /* syscall slot, as in the arrays */
	__u32 err; /* positive errno with -x/-e, else 0 */
};

struct syscount_hist {
	__u64 buckets[SYSCOUNT_HIST_BUCKETS];
};

/* A process's name, refreshed at exec (so a launched command is named after
 * the program it runs, not after the tool that forked it), and its cgroup v2
 * id then, which user space maps to a container once per cgroup. */
struct syscount_comm {
	__u8 comm[16];
	__u64 cgroup_id;
};

#endif
