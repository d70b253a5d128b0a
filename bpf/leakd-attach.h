/* leakd-attach's kernel/user-space contract: the value kept per live block
 * in the `allocs` hash map (key: the block's address). The only definition;
 * Rust mirrors it with bindgen, so only fixed-size integer types here. */
#ifndef LEAKD_ATTACH_H
#define LEAKD_ATTACH_H

/* stack_id when bpf_get_stackid failed: the block is grouped by caller. */
#define LEAKD_ATTACH_NO_STACK 0xffffffffU

struct leakd_attach_alloc {
	__u64 size;     /* requested size in bytes */
	__u64 ts_ns;    /* CLOCK_MONOTONIC time of the allocation */
	__u64 caller;   /* return address into the allocating function */
	__u32 stack_id; /* id in the `stacks` map, or LEAKD_ATTACH_NO_STACK */
	__u32 pid;      /* tgid of the allocating process */
};

#endif
