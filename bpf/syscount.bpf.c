/* syscount: exact syscall counts, per syscall and/or per process, with
 * optional latency.
 *
 * Cost is the point of this tool, so every option is a const volatile global
 * set before load: the verifier removes the code of every option that is
 * off, and the default hot path is one raw tracepoint doing a per-CPU array
 * increment indexed by syscall number (no hash, no atomic, no ring buffer).
 * sys_exit is attached only when a return value or a duration is needed, the
 * hash keyed by process/errno is used only with -P/--matrix/-x/-e, and the
 * per-task start timestamp lives in task-local storage (a pointer chase, not
 * a hash lookup by tid as in the peers).
 *
 * Counters are only ever added to; user space computes interval deltas from
 * successive reads, so nothing is cleared under the writers' feet and no
 * increment can be lost between a read and a reset. */
#include "leakd.bpf.h"
#include "syscount.h"

/* Set by user space before load. */
const volatile __u8 keyed = 0;          /* count in the `keyed` hash, not `counts` */
const volatile __u8 key_tgid = 0;       /* -P: the hash key has the process */
const volatile __u8 key_nr = 0;         /* the hash key has the syscall */
const volatile __u8 count_at_exit = 0;  /* -x/-e: count failed calls at exit */
const volatile __u32 targ_errno = 0;    /* -e: only this errno (positive) */
const volatile __u8 timed = 0;          /* -L/--hist: time calls */
const volatile __u8 want_hist = 0;      /* --hist */
const volatile __u8 filter_comm = 0;    /* --comm */
const volatile __u8 targ_comm[16] = {};
const volatile __u8 filter_syscalls = 0; /* -s */
const volatile __u8 syscall_wanted[SYSCOUNT_NR_SLOTS] = {};

/* Per-syscall counters (the default). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SYSCOUNT_NR_SLOTS);
	__type(key, __u32);
	__type(value, struct syscount_val);
} counts SEC(".maps");

/* Counters keyed by process and/or errno; user space shrinks it to one
 * entry when unused. Not preallocated: a per-CPU value for every possible
 * entry would be megabytes per CPU; entries are only added on a first call. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct syscount_key);
	__type(value, struct syscount_val);
} keyed_counts SEC(".maps");

/* --hist: per-syscall latency histograms; one entry unless asked for. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SYSCOUNT_NR_SLOTS);
	__type(key, __u32);
	__type(value, struct syscount_hist);
} hists SEC(".maps");

/* -P: process names, by tgid. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct syscount_comm);
} comms SEC(".maps");

/* -L/--hist: when the current call of each task started, and which it is. */
struct start {
	__u64 ts_ns;
	__u32 nr;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct start);
} starts SEC(".maps");

static __always_inline __u32 slot(long id)
{
	return (unsigned long)id < SYSCOUNT_NR_MAX ? (__u32)id : SYSCOUNT_NR_OTHER;
}

static __always_inline int comm_matches(void)
{
	char comm[16] = {};
	int i;

	bpf_get_current_comm(comm, sizeof(comm));
#pragma unroll
	for (i = 0; i < 16; i++) {
		if (comm[i] != targ_comm[i])
			return 0;
		if (!comm[i])
			break;
	}
	return 1;
}

/* The shared filters (leakd.bpf.h), then --comm. */
static __always_inline int task_wanted(void)
{
	if (!leakd_wanted())
		return 0;
	if (filter_comm && !comm_matches())
		return 0;
	return 1;
}

static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xffffffffULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xffff) << 4; v >>= shift; r |= shift;
	shift = (v > 0xff) << 3; v >>= shift; r |= shift;
	shift = (v > 0xf) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline void add(struct syscount_val *v, int count, __u64 lat, int has_lat)
{
	if (count)
		v->count += 1;
	if (has_lat) {
		v->lat_ns_total += lat;
		v->lat_count += 1;
	}
}

/* Count one call (count) and/or one duration (has_lat) of syscall slot nr. */
static __always_inline void record(__u32 nr, __u32 err, int count, __u64 lat, int has_lat)
{
	struct syscount_val *v;

	if (!keyed) {
		v = bpf_map_lookup_elem(&counts, &nr);
		if (v)
			add(v, count, lat, has_lat);
	} else {
		struct syscount_key key = {};
		struct syscount_val zero = {};

		if (key_tgid)
			key.tgid = bpf_get_current_pid_tgid() >> 32;
		if (key_nr)
			key.nr = nr;
		key.err = err;
		v = bpf_map_lookup_elem(&keyed_counts, &key);
		if (!v) {
			/* Fails with EEXIST if another CPU just added it. */
			bpf_map_update_elem(&keyed_counts, &key, &zero, BPF_NOEXIST);
			if (key_tgid && !bpf_map_lookup_elem(&comms, &key.tgid)) {
				struct syscount_comm c = {};

				bpf_get_current_comm(c.comm, sizeof(c.comm));
				c.cgroup_id = bpf_get_current_cgroup_id();
				bpf_map_update_elem(&comms, &key.tgid, &c, BPF_NOEXIST);
			}
			v = bpf_map_lookup_elem(&keyed_counts, &key);
			if (!v) {
				leakd_count_lost(LEAKD_LOST_MAP_FULL);
				return;
			}
		}
		add(v, count, lat, has_lat);
	}
	if (want_hist && has_lat) {
		struct syscount_hist *h = bpf_map_lookup_elem(&hists, &nr);
		__u32 b = lat ? log2_u64(lat) : 0;

		if (b >= SYSCOUNT_HIST_BUCKETS)
			b = SYSCOUNT_HIST_BUCKETS - 1;
		if (h)
			h->buckets[b] += 1;
	}
}

SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long id)
{
	__u32 nr;

	if (!task_wanted())
		return 0;
	nr = slot(id);
	if (filter_syscalls && !syscall_wanted[nr])
		return 0;
	if (timed) {
		struct start *st = bpf_task_storage_get(&starts, bpf_get_current_task_btf(), NULL,
							BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (st) {
			st->nr = nr;
			st->ts_ns = bpf_ktime_get_ns();
		} else {
			leakd_count_lost(LEAKD_LOST_MAP_FULL);
		}
	}
	if (!count_at_exit)
		record(nr, 0, 1, 0, 0);
	return 0;
}

/* Attached only with -L/--hist/-x/-e. */
SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
	__u64 lat = 0;
	__u32 nr, err = 0;
	int has_lat = 0;

	if (timed) {
		/* The filters ran at entry: only wanted calls have a start. A
		 * call already in progress when tracing began has none. */
		struct start *st = bpf_task_storage_get(&starts, bpf_get_current_task_btf(), NULL, 0);

		if (!st || !st->ts_ns)
			return 0;
		lat = bpf_ktime_get_ns() - st->ts_ns;
		nr = st->nr;
		st->ts_ns = 0;
		has_lat = 1;
	} else {
		if (!task_wanted())
			return 0;
		nr = slot(BPF_CORE_READ(regs, orig_ax));
		if (filter_syscalls && !syscall_wanted[nr])
			return 0;
	}
	if (count_at_exit) {
		/* The kernel's error convention: -4095..-1. */
		if (ret >= 0 || ret < -4095)
			return 0;
		err = -ret;
		if (targ_errno && err != targ_errno)
			return 0;
	}
	record(nr, err, count_at_exit, lat, has_lat);
	return 0;
}

/* -P: a process that execs takes its new name. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(syscount_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct syscount_comm c = {};

	if (!bpf_map_lookup_elem(&comms, &tgid))
		return 0;
	bpf_get_current_comm(c.comm, sizeof(c.comm));
	c.cgroup_id = bpf_get_current_cgroup_id();
	bpf_map_update_elem(&comms, &tgid, &c, BPF_EXIST);
	return 0;
}
