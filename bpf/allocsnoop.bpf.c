/* allocsnoop: one event per allocator call, streamed through a ring buffer.
 * The probe logic (nesting, realloc semantics) is in alloc.bpf.h; this file
 * only decides what an event carries. */
#include "alloc.bpf.h"
#include "allocsnoop.h"
#include "unwind.bpf.h"
#include "mappings.bpf.h"

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

/* Stacks whose mappings were recorded, by process and hash of the frames:
 * an event's stack is looked up in the process's mappings (mappings.bpf.h)
 * only the first time it is seen. */
struct stack_seen_key {
	__u64 hash;
	__u32 pid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct stack_seen_key);
	__type(value, __u8);
} stacks_seen SEC(".maps");

/* Record the mappings of the event's frames if its stack is new. */
static __always_inline void note_stack(struct allocsnoop_event *e)
{
	struct stack_seen_key k = { .hash = 0xcbf29ce484222325ULL, .pid = e->pid };
	struct mappings_scratch *m;
	__u8 one = 1;
	__u32 i, n = e->nr_frames;

	if (!n)
		return;
	for (i = 0; i < ALLOCSNOOP_MAX_FRAMES; i++) {
		if (i >= n)
			break;
		k.hash = (k.hash ^ e->frames[i]) * 0x100000001b3ULL;
	}
	if (bpf_map_lookup_elem(&stacks_seen, &k))
		return;
	m = mappings_scratch_get();
	if (!m)
		return;
	__builtin_memcpy(m->frames, e->frames, sizeof(e->frames));
	mappings_note(m, n < ALLOCSNOOP_MAX_FRAMES ? n : ALLOCSNOOP_MAX_FRAMES);
	bpf_map_update_elem(&stacks_seen, &k, &one, BPF_ANY);
}

/* Frames of a DWARF walk into the event. */
static __always_inline void copy_walk(struct allocsnoop_event *e, struct unwind_scratch *s)
{
	if (!s || !s->n) {
		leakd_count_lost(LEAKD_LOST_STACK);
		return;
	}
	__builtin_memcpy(e->frames, s->frames, sizeof(e->frames));
	e->nr_frames = s->n < ALLOCSNOOP_MAX_FRAMES ? s->n : ALLOCSNOOP_MAX_FRAMES;
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
		if (unwind_mode != UNWIND_MODE_FP) {
			copy_walk(e, unwind_walk(PT_REGS_IP((struct pt_regs *)ctx),
						 PT_REGS_SP((struct pt_regs *)ctx),
						 PT_REGS_FP((struct pt_regs *)ctx), ALLOCSNOOP_MAX_FRAMES));
		} else if (!unwind_fp_plausible(PT_REGS_SP((struct pt_regs *)ctx),
					       PT_REGS_FP((struct pt_regs *)ctx))) {
			e->frames[0] = PT_REGS_IP((struct pt_regs *)ctx);
			e->nr_frames = 1;
		} else {
			n = bpf_get_stack(ctx, e->frames, sizeof(e->frames), BPF_F_USER_STACK);
			if (n > 0)
				e->nr_frames = n / sizeof(__u64);
			else
				leakd_count_lost(LEAKD_LOST_STACK);
		}
		note_stack(e);
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
	if (capture_stack && unwind_mode != UNWIND_MODE_FP) {
		/* At entry the caller's state is one pop away: its return
		 * address at [sp], its sp above it, rbp still its own. */
		__u64 ra = 0;

		if (bpf_probe_read_user(&ra, sizeof(ra), (void *)sp) == 0)
			copy_walk(e, unwind_walk(ra, sp + 8, PT_REGS_FP((struct pt_regs *)ctx),
						 ALLOCSNOOP_MAX_FRAMES));
		else
			leakd_count_lost(LEAKD_LOST_STACK);
	} else if (capture_stack) {
		/* At entry the frame-pointer walk skips the caller (rbp is still
		 * the caller's): read the return address at [sp], then skip the
		 * walk's first frame (the probed instruction itself). */
		if (bpf_probe_read_user(&e->frames[0], sizeof(__u64), (void *)sp) == 0) {
			n = 0;
			if (unwind_fp_plausible(sp + 8, PT_REGS_FP((struct pt_regs *)ctx)))
				n = bpf_get_stack(ctx, &e->frames[1],
						  sizeof(e->frames) - sizeof(__u64),
						  BPF_F_USER_STACK | 1);
			e->nr_frames = 1 + (n > 0 ? n / sizeof(__u64) : 0);
		} else {
			leakd_count_lost(LEAKD_LOST_STACK);
		}
	}
	if (capture_stack)
		note_stack(e);
	bpf_ringbuf_submit(e, leakd_rb_flags(&events, capture_stack ? sizeof(*e) : HDR_SIZE));
}
