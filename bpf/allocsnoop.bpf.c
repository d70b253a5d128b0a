/* allocsnoop: one event per allocator call, streamed through a ring buffer.
 * The probe logic (nesting, realloc semantics) is in alloc.bpf.h; this file
 * only decides what an event carries. */
#include "alloc.bpf.h"
#include "allocsnoop.h"

const volatile __u8 capture_stack = 0;
const volatile __u64 min_size = 0;
const volatile __u64 max_size = ~0ULL;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 20);
} events SEC(".maps");

#define HDR_SIZE (sizeof(struct allocsnoop_event) - ALLOCSNOOP_MAX_FRAMES * sizeof(__u64))

static __always_inline struct allocsnoop_event *reserve(void)
{
	struct allocsnoop_event *e;

	/* Two constant sizes: the verifier wants a constant for reserve. */
	if (capture_stack)
		e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	else
		e = bpf_ringbuf_reserve(&events, HDR_SIZE, 0);
	if (!e) {
		leakd_count_lost(LEAKD_LOST_RINGBUF);
		return NULL;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->tid = (__u32)bpf_get_current_pid_tgid();
	e->nr_frames = 0;
	e->old_addr = 0;
	e->align = 0;
	e->failed = 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void on_alloc(void *ctx, __u32 op, __u64 addr, __u64 old_addr,
				     __u64 size, __u64 align, int failed)
{
	struct allocsnoop_event *e;
	long n;

	/* The size filter is on the requested size (realloc: the new one). */
	if (size < min_size || size > max_size)
		return;
	e = reserve();
	if (!e)
		return;
	e->op = op;
	e->addr = addr;
	e->old_addr = old_addr;
	e->size_bytes = size;
	e->align = align;
	e->failed = failed;
	if (capture_stack) {
		/* In a return probe the user stack starts at the caller. */
		n = bpf_get_stack(ctx, e->frames, sizeof(e->frames), BPF_F_USER_STACK);
		if (n > 0)
			e->nr_frames = n / sizeof(__u64);
		else
			leakd_count_lost(LEAKD_LOST_STACK);
	}
	bpf_ringbuf_submit(e, leakd_rb_flags(&events, capture_stack ? sizeof(*e) : HDR_SIZE));
}

static __always_inline void on_free(void *ctx, __u32 op, __u64 addr, __u64 size, __u64 sp)
{
	struct allocsnoop_event *e = reserve();
	long n;

	if (!e)
		return;
	e->op = op;
	e->addr = addr;
	e->size_bytes = size;
	if (capture_stack) {
		/* At entry the frame-pointer walk skips the caller (rbp is still
		 * the caller's): read the return address at [sp], then skip the
		 * walk's first frame (the probed instruction itself). */
		if (bpf_probe_read_user(&e->frames[0], sizeof(__u64), (void *)sp) == 0) {
			n = bpf_get_stack(ctx, &e->frames[1], sizeof(e->frames) - sizeof(__u64),
					  BPF_F_USER_STACK | 1);
			e->nr_frames = 1 + (n > 0 ? n / sizeof(__u64) : 0);
		} else {
			leakd_count_lost(LEAKD_LOST_STACK);
		}
	}
	bpf_ringbuf_submit(e, leakd_rb_flags(&events, capture_stack ? sizeof(*e) : HDR_SIZE));
}
