/* Shared BPF-side helpers: the process/cgroup filter every tool applies, the
 * descendant tracking used when a tool launches its own command, and the
 * lost-event counters. Each tool's .bpf.c includes this once; the globals
 * below are set by user space before load (const volatile = read-only map,
 * so the verifier prunes the branches of filters that are off). */
#ifndef LEAKD_BPF_H
#define LEAKD_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "leakd.h"

char LICENSE[] SEC("license") = "GPL";

/* 0: every process. Otherwise only this tgid (and, with follow_children,
 * every process in leakd_tracked, which starts with it). */
const volatile __u32 targ_tgid = 0;
const volatile __u8 follow_children = 0;
/* The tool's own process, never traced: tracing our own allocations (or
 * syscalls) while reporting them would feed back on itself. */
const volatile __u32 self_tgid = 0;
/* 0: every cgroup. Otherwise the cgroup v2 id (inode of its directory),
 * matched with its whole subtree: a task passes when its ancestor at
 * targ_cgroup_level (the directory's depth below the root, which is 0) is
 * that cgroup, so a pod's directory catches its containers' cgroups. */
const volatile __u64 targ_cgroup_id = 0;
const volatile __u32 targ_cgroup_level = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} leakd_tracked SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LEAKD_LOST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} leakd_lost SEC(".maps");

static __always_inline void leakd_count_lost(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&leakd_lost, &reason);
	if (n)
		*n += 1;
}

/* Ring-buffer wakeups cost the traced task an irq_work per event. Wake the
 * reader once, when the unread data crosses a threshold (not at every event
 * past it: that would be a wakeup per event again while the reader runs);
 * the reader also polls with a short timeout (see event_loop.rs), so a quiet
 * stream is still timely. `size` is the record just reserved or output. */
#define LEAKD_WAKEUP_BYTES (256 * 1024)

static __always_inline __u64 leakd_rb_flags(void *ringbuf, __u64 size)
{
	__u64 avail = bpf_ringbuf_query(ringbuf, BPF_RB_AVAIL_DATA);
	/* The record, as the ring stores it: 8-byte header, 8-byte aligned. */
	__u64 rec = 8 + ((size + 7) & ~7ULL);

	return avail >= LEAKD_WAKEUP_BYTES && avail < LEAKD_WAKEUP_BYTES + rec ?
		BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline int leakd_tgid_wanted(__u32 tgid)
{
	if (tgid == self_tgid)
		return 0;
	if (!targ_tgid || tgid == targ_tgid)
		return 1;
	/* Only a launched command's children pay for the lookup. */
	if (follow_children)
		return bpf_map_lookup_elem(&leakd_tracked, &tgid) != NULL;
	return 0;
}

/* Whether the current task passes the shared -p / -- CMD / --cgroup filters. */
static __always_inline int leakd_wanted(void)
{
	if (targ_cgroup_id &&
	    bpf_get_current_ancestor_cgroup_id(targ_cgroup_level) != targ_cgroup_id)
		return 0;
	return leakd_tgid_wanted(bpf_get_current_pid_tgid() >> 32);
}

/* Descendant tracking, attached by user space only with follow_children. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(leakd_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	__u8 one = 1;

	if (ptgid == ctgid || !bpf_map_lookup_elem(&leakd_tracked, &ptgid))
		return 0;
	bpf_map_update_elem(&leakd_tracked, &ctgid, &one, BPF_ANY);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(leakd_exit, struct task_struct *p)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);

	/* Forget a process only when its last thread goes: the main thread
	 * may exit first (pthread_exit) and leave the others running, and
	 * forking. do_exit counts the thread out of signal->live before this
	 * tracepoint, so the last one reads 0 (two exiting at once may both:
	 * deleting twice is harmless). */
	if (BPF_CORE_READ(p, signal, live.counter) == 0)
		bpf_map_delete_elem(&leakd_tracked, &tgid);
	return 0;
}

#endif
