/* The allocation probe layer shared by allocsnoop and leakd-attach.
 *
 * One entry program and one return program serve every allocator function;
 * the attach cookie says which function fired. Per-thread state is keyed by
 * thread and records the stack pointer at entry, which is how nested calls
 * are told apart from new ones: glibc's realloc(NULL, n) tail-jumps into
 * malloc, reallocarray into realloc, realloc(p, 0) calls free, and each of
 * those inner calls hits our probes too. A call that starts while an outer
 * one is in flight on the same thread at the same or a deeper stack level
 * is nested: only the outermost call is reported, once. A call at a
 * shallower level means the outer record is stale (its return was never
 * seen) and replaces it.
 *
 * C++'s operators nest the same way: operator new calls malloc (and
 * libstdc++'s nothrow new calls the throwing one: the same op, told apart
 * at return by the stack pointer, which is the entry's + 8 only for the
 * outermost call's return). Deletes are probed at entry only, so the free
 * they call is recognised by the block's address: a delete records it, and
 * the free of that address at the same or a deeper level of the same
 * thread is its inner call, not reported (a sized delete tail-calls the
 * plain one at the same level the same way).
 *
 * The including tool defines:
 *   static __always_inline void on_alloc(void *ctx, __u32 op, __u64 addr,
 *       __u64 old_addr, __u64 size, __u64 align, int failed);
 *   static __always_inline void on_free(void *ctx, __u32 op, __u64 addr,
 *       __u64 size, __u64 sp);
 * on_alloc runs in the return probe (the stack there starts at the caller);
 * on_free runs at entry, with the stack pointer so the caller can be read. */
#ifndef ALLOC_BPF_H
#define ALLOC_BPF_H

#include "leakd.bpf.h"
#include "alloc.h"

struct alloc_pending {
	__u64 sp;
	__u64 size;
	__u64 align;
	__u64 old_addr;
	__u64 memptr; /* posix_memalign's out pointer */
	__u32 op;
	__u32 pad;
	/* The block a delete in flight is freeing, and its entry's sp. */
	__u64 free_addr;
	__u64 free_sp;
};

/* The call in flight, per thread: task-local storage is a pointer chase
 * from the task, where a hash keyed by tid costs a hash, a bucket lock and
 * an element allocation per call. sp == 0 means none (no stack is at 0). */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct alloc_pending);
} alloc_inflight SEC(".maps");

static __always_inline struct alloc_pending *alloc_pending_get(__u64 flags)
{
	return bpf_task_storage_get(&alloc_inflight, bpf_get_current_task_btf(), 0, flags);
}

static __always_inline void on_alloc(void *ctx, __u32 op, __u64 addr, __u64 old_addr,
				     __u64 size, __u64 align, int failed);
static __always_inline void on_free(void *ctx, __u32 op, __u64 addr, __u64 size, __u64 sp);

/* Whether a call entering at `sp` is nested in the one in flight, `p`. */
static __always_inline int alloc_nested(struct alloc_pending *p, __u64 sp)
{
	return p && p->sp && p->sp >= sp;
}

static __always_inline __u64 mul_or_max(__u64 a, __u64 b)
{
	__u64 r = a * b;

	/* The barrier keeps clang from turning this into a 128-bit multiply,
	 * which BPF does not have. */
	barrier_var(r);
	if (a && r / a != b)
		return ~0ULL; /* overflow: the call will fail */
	return r;
}

/* The programs below come in two kinds: the generic ones, attached to
 * every allocator function, read which function fired from the attach
 * cookie; malloc_enter/malloc_return and free_plain serve malloc and free
 * alone, the calls a program makes most, and know their op without it
 * (bpf_get_attach_cookie is a helper call, ~10 ns a hit: ~30 ns of each
 * malloc+free pair, scripts/bench-bpf-floor). Each pair of programs is one
 * body (the _common functions) with the op either read or constant. */

static __always_inline int alloc_enter_common(struct pt_regs *ctx, int known, __u64 cookie)
{
	__u64 sp = PT_REGS_SP(ctx);
	struct alloc_pending p = {}, *slot;

	if (!leakd_wanted())
		return 0;
	/* One lookup serves both the nesting check and the update. */
	slot = alloc_pending_get(BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!slot) {
		leakd_count_lost(LEAKD_LOST_MAP_FULL);
		return 0;
	}
	if (alloc_nested(slot, sp))
		return 0;
	/* A delete's free comes before any allocation of its thread: a
	 * record still there is stale (its free was not probed). */
	slot->free_addr = 0;
	if (!known)
		cookie = bpf_get_attach_cookie(ctx);
	p.sp = sp;
	p.op = cookie & ALLOC_COOKIE_OP_MASK;
	switch (p.op) {
	case ALLOC_OP_NEW:
	case ALLOC_OP_NEW_ARRAY:
		p.size = PT_REGS_PARM1(ctx);
		if (cookie & ALLOC_COOKIE_ALIGNED)
			p.align = PT_REGS_PARM2(ctx);
		break;
	case ALLOC_OP_MALLOC:
	case ALLOC_OP_VALLOC:
	case ALLOC_OP_PVALLOC:
		p.size = PT_REGS_PARM1(ctx);
		break;
	case ALLOC_OP_CALLOC:
		p.size = mul_or_max(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx));
		break;
	case ALLOC_OP_REALLOC:
		p.old_addr = PT_REGS_PARM1(ctx);
		p.size = PT_REGS_PARM2(ctx);
		break;
	case ALLOC_OP_REALLOCARRAY:
		p.old_addr = PT_REGS_PARM1(ctx);
		p.size = mul_or_max(PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx));
		break;
	case ALLOC_OP_POSIX_MEMALIGN:
		p.memptr = PT_REGS_PARM1(ctx);
		p.align = PT_REGS_PARM2(ctx);
		p.size = PT_REGS_PARM3(ctx);
		break;
	case ALLOC_OP_ALIGNED_ALLOC:
	case ALLOC_OP_MEMALIGN:
		p.align = PT_REGS_PARM1(ctx);
		p.size = PT_REGS_PARM2(ctx);
		break;
	case ALLOC_OP_MMAP:
		p.size = PT_REGS_PARM2(ctx);
		break;
	default:
		return 0;
	}
	slot->sp = p.sp;
	slot->size = p.size;
	slot->align = p.align;
	slot->old_addr = p.old_addr;
	slot->memptr = p.memptr;
	slot->op = p.op;
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(alloc_enter)
{
	return alloc_enter_common(ctx, 0, 0);
}

SEC("uprobe")
int BPF_KPROBE(malloc_enter)
{
	return alloc_enter_common(ctx, 1, ALLOC_OP_MALLOC);
}

static __always_inline int alloc_return_common(struct pt_regs *ctx, __u32 op)
{
	__u64 ret = PT_REGS_RC(ctx);
	struct alloc_pending *p;
	__u64 addr = ret;
	int failed;

	p = alloc_pending_get(0);
	if (!p || !p->sp) {
		if (leakd_wanted())
			leakd_count_lost(LEAKD_LOST_UNMATCHED);
		return 0;
	}
	/* The return of a nested call: the outer call reports. A nested call
	 * of the same op returns deeper than the outer's entry sp + 8. */
	if (p->op != op || PT_REGS_SP(ctx) != p->sp + 8)
		return 0;
	if (op == ALLOC_OP_POSIX_MEMALIGN) {
		addr = 0;
		if ((int)ret == 0)
			bpf_probe_read_user(&addr, sizeof(addr), (void *)p->memptr);
		failed = (int)ret != 0;
	} else if (op == ALLOC_OP_MMAP) {
		failed = ret == (__u64)-1;
		if (failed)
			addr = 0;
	} else {
		/* realloc(p, 0) returns NULL after freeing p, and so does
		 * reallocarray(p, 0, n) (a realloc): not a failure. */
		failed = ret == 0 && !((op == ALLOC_OP_REALLOC || op == ALLOC_OP_REALLOCARRAY) &&
				       p->size == 0 && p->old_addr);
	}
	on_alloc(ctx, op, addr, p->old_addr, p->size, p->align, failed);
	p->sp = 0;
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(alloc_return)
{
	return alloc_return_common(ctx, bpf_get_attach_cookie(ctx) & ALLOC_COOKIE_OP_MASK);
}

SEC("uretprobe")
int BPF_KRETPROBE(malloc_return)
{
	return alloc_return_common(ctx, ALLOC_OP_MALLOC);
}

static __always_inline int free_enter_common(struct pt_regs *ctx, __u32 op)
{
	__u64 sp = PT_REGS_SP(ctx);
	__u64 addr = PT_REGS_PARM1(ctx);
	struct alloc_pending *p;
	int is_delete = op == ALLOC_OP_DELETE || op == ALLOC_OP_DELETE_ARRAY;

	if (!addr) /* free(NULL) is not an event */
		return 0;
	if (!leakd_wanted())
		return 0;
	p = alloc_pending_get(is_delete ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	if (alloc_nested(p, sp))
		return 0;
	if (p && p->free_addr == addr && p->free_sp >= sp) {
		/* Inside a delete of this block: its free, or another delete
		 * it calls. The free ends it. */
		if (!is_delete)
			p->free_addr = 0;
		return 0;
	}
	on_free(ctx, op, addr, op == ALLOC_OP_MUNMAP ? PT_REGS_PARM2(ctx) : 0, sp);
	if (is_delete && p) {
		p->free_addr = addr;
		p->free_sp = sp;
	}
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(free_enter)
{
	return free_enter_common(ctx, bpf_get_attach_cookie(ctx) & ALLOC_COOKIE_OP_MASK);
}

SEC("uprobe")
int BPF_KPROBE(free_plain)
{
	return free_enter_common(ctx, ALLOC_OP_FREE);
}

#endif
