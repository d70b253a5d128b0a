/* leakd-attach: keep every live heap block in a hash map (address -> size,
 * time, stack id) instead of streaming events. Frees delete entries, so the
 * map *is* the set of outstanding allocations and user space only has to
 * read it at report time: the cost per call is one map update or delete,
 * with nothing crossing to user space. The probe logic (which calls nest,
 * realloc semantics) lives in alloc.bpf.h. */
#include "alloc.bpf.h"
#include "leakd-attach.h"

/* Only blocks whose requested size is within [min_size, max_size] are kept. */
const volatile __u64 min_size = 0;
const volatile __u64 max_size = ~0ULL;

/* max_entries is set from --max-allocs by user space before load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1000000);
	__type(key, __u64);
	__type(value, struct leakd_attach_alloc);
} allocs SEC(".maps");

/* 127 = PERF_MAX_STACK_DEPTH, the most bpf_get_stackid walks. Identical
 * stacks share one id, so this bounds distinct allocation sites. */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
} stacks SEC(".maps");

static __always_inline void on_alloc(void *ctx, __u32 op, __u64 addr, __u64 old_addr,
				     __u64 size, __u64 align, int failed)
{
	struct leakd_attach_alloc a = {};
	long id;

	/* realloc frees its argument when it succeeds, and glibc's realloc(p, 0)
	 * frees p and returns NULL. Delete first: the new block may be at the
	 * same address. */
	if (old_addr && (addr || size == 0))
		bpf_map_delete_elem(&allocs, &old_addr);
	if (!addr || failed)
		return;
	if (size < min_size || size > max_size)
		return;
	a.size = size;
	a.ts_ns = bpf_ktime_get_ns();
	/* In the return probe the instruction pointer is the return address. */
	a.caller = PT_REGS_IP((struct pt_regs *)ctx);
	a.pid = bpf_get_current_pid_tgid() >> 32;
	/* ...and the user stack walk starts at the caller. */
	id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	if (id < 0) {
		leakd_count_lost(LEAKD_LOST_STACK);
		a.stack_id = LEAKD_ATTACH_NO_STACK;
	} else {
		a.stack_id = id;
	}
	if (bpf_map_update_elem(&allocs, &addr, &a, BPF_ANY))
		leakd_count_lost(LEAKD_LOST_MAP_FULL);
}

static __always_inline void on_free(void *ctx, __u32 op, __u64 addr, __u64 size, __u64 sp)
{
	bpf_map_delete_elem(&allocs, &addr);
}
