/* leakd-attach: keep every live heap block in a hash map ((process, address)
 * -> size, time, stack id) instead of streaming events. Frees delete entries, so the
 * map *is* the set of outstanding allocations and user space only has to
 * read it at report time: the cost per call is one map update or delete,
 * with nothing crossing to user space. The probe logic (which calls nest,
 * realloc semantics) lives in alloc.bpf.h.
 *
 * Per-site totals (`sites`) are kept here too, with atomic adds, by both
 * the alloc and the free of a tracked block: the free finds the block's
 * site in its `allocs` entry, so a free is always charged to the stack that
 * allocated the block (BCC's combined mode lost that, issue 4869, and
 * updated its totals with racy read-modify-writes, issue 3341). That gives
 * cumulative allocs/frees per stack, and lets --combined read one entry per
 * stack instead of every live block.
 *
 * With sample_bytes (--sample-bytes N), blocks are tracked with probability
 * 1 - exp(-size/N), as jemalloc's and tcmalloc's heap profilers do: a
 * per-CPU countdown of bytes is decremented by each allocation's size and a
 * block is tracked when it crosses zero; the countdown is then refilled with
 * an exponential draw of mean N. Sampling points thus form a Poisson
 * process over the byte stream, which is what makes the probability exact
 * and independent of how the stream is interleaved. No floats in BPF: the
 * draws come from a table of -ln(u) and the scaling from a table of
 * g(x) = x/(e^x - 1), both filled in by user space before load. */
#include "alloc.bpf.h"
#include "leakd-attach.h"
#define UNWIND_STACK_TABLE LEAKD_ATTACH_MAX_STACKS
#include "unwind.bpf.h"
#include "mappings.bpf.h"

#define EEXIST 17

_Static_assert(LEAKD_ATTACH_MISMATCH_FRAMES == UNWIND_MAX_FRAMES, "a walk fits a mismatch record");

/* Only blocks whose requested size is within [min_size, max_size] are kept. */
const volatile __u64 min_size = 0;
const volatile __u64 max_size = ~0ULL;
/* 0: track every block. Otherwise the mean sampling interval in bytes. */
const volatile __u64 sample_bytes = 0;
/* -ln((i + 0.5) / LN_ENTRIES) in units of 1/LEAKD_ATTACH_ONE (mean 1). */
const volatile __u32 neg_ln[LEAKD_ATTACH_LN_ENTRIES] = {};
/* g((i + 0.5) / G_STEPS) in units of 1/LEAKD_ATTACH_ONE. */
const volatile __u32 g_table[LEAKD_ATTACH_G_ENTRIES] = {};

/* max_entries is set from --max-allocs by user space before load. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1000000);
	__type(key, struct leakd_attach_block);
	__type(value, struct leakd_attach_alloc);
} allocs SEC(".maps");

/* Per-site totals; twice the stacks: sites without a stack are by caller. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LEAKD_ATTACH_MAX_SITES);
	__type(key, struct leakd_attach_site);
	__type(value, struct leakd_attach_stats);
} sites SEC(".maps");

/* Bytes left until the next sampled block, per CPU (with sample_bytes). */
struct sample_state {
	__s64 left;
	__u64 primed;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sample_state);
} sample SEC(".maps");

/* An exponential draw of mean sample_bytes. */
static __always_inline __s64 sample_draw(void)
{
	__u32 i = bpf_get_prandom_u32() & (LEAKD_ATTACH_LN_ENTRIES - 1);

	return (__s64)((neg_ln[i] * sample_bytes) / LEAKD_ATTACH_ONE);
}

/* Whether to track a block of `size` bytes (always, without sampling). */
static __always_inline int sampled(__u64 size)
{
	struct sample_state *st;
	__u32 zero = 0;

	if (!sample_bytes)
		return 1;
	st = bpf_map_lookup_elem(&sample, &zero);
	if (!st)
		return 0;
	if (!st->primed) {
		st->left = sample_draw();
		st->primed = 1;
	}
	/* user space caps sample_bytes at 2^40: a bigger block is always taken */
	if (size >= (1ULL << 62)) {
		st->left = sample_draw();
		return 1;
	}
	st->left -= (__s64)size;
	if (st->left > 0)
		return 0;
	st->left = sample_draw();
	return 1;
}

/* What a tracked block of `size` bytes stands for, with sampling: size/p
 * bytes and 1/p blocks (in units of 1/ONE), p = 1 - exp(-size/N). size/p =
 * size + N*g(size/N), with g falling from 1 to ~0 at size = 16 N. */
static __always_inline void sample_weight(__u64 size, __u64 *bytes, __u64 *count)
{
	__u64 idx, w;

	if (!size || size >= 16 * sample_bytes) {
		*bytes = size;
		*count = LEAKD_ATTACH_ONE;
		return;
	}
	idx = (size * LEAKD_ATTACH_G_STEPS) / sample_bytes;
	w = size + (g_table[idx & (LEAKD_ATTACH_G_ENTRIES - 1)] * sample_bytes) / LEAKD_ATTACH_ONE;
	*bytes = w;
	*count = (w * LEAKD_ATTACH_ONE) / size;
}

/* Add one block of `size` bytes to one side of a site's totals (allocs or
 * frees: the count, the bytes and, with sampling, their estimates), or take
 * it back with sign -1: one function, so a take-back always undoes exactly
 * what was added. Unsigned: -1 * x wraps to the same bits as -x. */
static __always_inline void count_block(__u64 *n, __u64 *n_bytes, __u64 *est_n,
					__u64 *est_bytes, __u64 size, __u64 sign)
{
	__u64 bytes, count;

	__sync_fetch_and_add(n, sign);
	__sync_fetch_and_add(n_bytes, sign * size);
	if (!sample_bytes)
		return;
	sample_weight(size, &bytes, &count);
	__sync_fetch_and_add(est_n, sign * count);
	__sync_fetch_and_add(est_bytes, sign * bytes);
}

/* The totals of the site a block belongs to, created on first use (the
 * same key for its alloc and its free, built from the block's record);
 * *created says whether this call created them. */
static __always_inline struct leakd_attach_stats *site_stats_new(const struct leakd_attach_alloc *a,
								 __u32 pid, int *created)
{
	static const struct leakd_attach_stats zero = {};
	struct leakd_attach_site site = {
		.caller = a->caller,
		.stack_id = a->stack_id,
		.pid = pid,
	};
	struct leakd_attach_stats *s = bpf_map_lookup_elem(&sites, &site);

	if (s)
		return s;
	/* NOEXIST: another CPU may create it at the same time; then use theirs. */
	*created = bpf_map_update_elem(&sites, &site, &zero, BPF_NOEXIST) == 0;
	s = bpf_map_lookup_elem(&sites, &site);
	if (!s)
		leakd_count_lost(LEAKD_LOST_MAP_FULL);
	return s;
}

static __always_inline struct leakd_attach_stats *site_stats(const struct leakd_attach_alloc *a,
							     __u32 pid)
{
	int created;

	return site_stats_new(a, pid, &created);
}

/* A new site: record the mappings of its stack's frames (see
 * mappings.bpf.h), so its lines keep their modules after the process
 * exits. The walk is read again (the kernel's stack map cannot be read
 * from BPF), once per site. */
static __always_inline void note_site_mappings(void *ctx, __u64 caller, __u32 stack_id)
{
	struct mappings_scratch *m = mappings_scratch_get();
	struct unwind_scratch *u;
	long n;

	if (!m)
		return;
	if (stack_id == LEAKD_ATTACH_CALLER_STACK) {
		n = 0;
	} else {
		/* The walk user_stack_id just made is still in the scratch. */
		u = unwind_scratch_get();
		if (!u)
			return;
		__builtin_memcpy(m->frames, u->frames, sizeof(u->frames));
		n = u->n < UNWIND_MAX_FRAMES ? u->n : UNWIND_MAX_FRAMES;
	}
	if (n <= 0) {
		m->frames[0] = caller;
		n = 1;
	}
	mappings_note(m, n);
}

/* The key of the calling process's block at `addr`. */
static __always_inline struct leakd_attach_block block_key(__u64 addr)
{
	struct leakd_attach_block k = {
		.addr = addr,
		.pid = bpf_get_current_pid_tgid() >> 32,
	};

	return k;
}

/* Blocks freed with the wrong operator (struct leakd_attach_mismatch). A
 * bug of the traced program, so rare: the reader drains it at its ticks,
 * without wakeups. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} mismatches SEC(".maps");

/* Which deallocation a block calls for: free (the malloc family), delete
 * (new) or delete[] (new[]); mmap'ed blocks, and untrack calls that are
 * not a free (NO_CHECK), are not checked. */
#define FAMILY_FREE 0
#define FAMILY_DELETE 1
#define FAMILY_DELETE_ARRAY 2
#define FAMILY_NONE 3
#define NO_CHECK ALLOC_OP_MAX

static __always_inline __u32 op_family(__u32 op)
{
	switch (op) {
	case ALLOC_OP_NEW:
	case ALLOC_OP_DELETE:
		return FAMILY_DELETE;
	case ALLOC_OP_NEW_ARRAY:
	case ALLOC_OP_DELETE_ARRAY:
		return FAMILY_DELETE_ARRAY;
	case ALLOC_OP_MMAP:
	case ALLOC_OP_MUNMAP:
	case NO_CHECK:
		return FAMILY_NONE;
	default:
		return FAMILY_FREE;
	}
}

/* Report block `a` at `addr` freed by `free_op`, with the free's stack:
 * at the free's entry (sp: its return address at [sp]), or in a realloc's
 * return probe (sp 0: ctx is at the caller). Out of line: only the rare
 * mismatch pays for it. */
static __noinline void report_mismatch(void *ctx, const struct leakd_attach_alloc *a, __u64 addr,
				       __u32 free_op, __u64 sp)
{
	struct pt_regs *regs = ctx;
	struct leakd_attach_mismatch *e;
	struct mappings_scratch *m;
	struct unwind_scratch *u;
	__u64 ra = 0;
	long n = 0;

	e = bpf_ringbuf_reserve(&mismatches, sizeof(*e), 0);
	if (!e) {
		leakd_count_lost(LEAKD_LOST_RINGBUF);
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->addr = addr;
	e->size = a->size;
	e->alloc_caller = a->caller;
	e->alloc_stack_id = a->stack_id;
	e->alloc_op = a->op;
	e->free_op = free_op;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->tid = (__u32)bpf_get_current_pid_tgid();
	e->nr_frames = 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	if (sp && bpf_probe_read_user(&ra, sizeof(ra), (void *)sp))
		goto out; /* no stack */
	if (unwind_mode != UNWIND_MODE_FP) {
		/* At an entry the caller's state is one pop away (see allocsnoop). */
		u = sp ? unwind_walk(ra, sp + 8, PT_REGS_FP(regs), LEAKD_ATTACH_MISMATCH_FRAMES) :
			 unwind_walk(PT_REGS_IP(regs), PT_REGS_SP(regs), PT_REGS_FP(regs),
				     LEAKD_ATTACH_MISMATCH_FRAMES);
		if (u) {
			__builtin_memcpy(e->frames, u->frames, sizeof(e->frames));
			n = u->n < LEAKD_ATTACH_MISMATCH_FRAMES ? u->n : LEAKD_ATTACH_MISMATCH_FRAMES;
		}
	} else if (sp) {
		/* rbp is still the caller's: its return address, then the walk
		 * without its first frame (the probed instruction). */
		e->frames[0] = ra;
		n = bpf_get_stack(ctx, &e->frames[1], sizeof(e->frames) - sizeof(__u64),
				  BPF_F_USER_STACK | 1);
		n = 1 + (n > 0 ? n / sizeof(__u64) : 0);
	} else {
		n = bpf_get_stack(ctx, e->frames, sizeof(e->frames), BPF_F_USER_STACK);
		n = n > 0 ? n / sizeof(__u64) : 0;
	}
	if (n <= 0) {
		leakd_count_lost(LEAKD_LOST_STACK);
		goto out;
	}
	e->nr_frames = n;
	/* Its modules, for a process that exits before the line is written. */
	m = mappings_scratch_get();
	if (m) {
		__builtin_memcpy(m->frames, e->frames, sizeof(e->frames));
		mappings_note(m, n < LEAKD_ATTACH_MISMATCH_FRAMES ? n : LEAKD_ATTACH_MISMATCH_FRAMES);
	}
out:
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

/* Forget a tracked block (free, or the old block of a realloc) that
 * `op` frees (NO_CHECK: not a free, no check); see report_mismatch for
 * ctx and sp. */
static __always_inline void untrack_op(void *ctx, __u64 addr, __u32 op, __u64 sp)
{
	struct leakd_attach_block key = block_key(addr);
	struct leakd_attach_alloc *found = bpf_map_lookup_elem(&allocs, &key);
	struct leakd_attach_alloc a;
	struct leakd_attach_stats *s;

	if (!found)
		return; /* not tracked: before we attached, filtered out or not sampled */
	a = *found;
	/* Only the caller whose delete succeeds counts the free (a double free
	 * racing on two threads must not count twice). */
	if (bpf_map_delete_elem(&allocs, &key))
		return;
	/* Before the free is counted: a site whose frees are all counted may
	 * have its stack deleted by user space, which reads this ring first. */
	if (op_family(a.op) != op_family(op) && op_family(a.op) != FAMILY_NONE &&
	    op_family(op) != FAMILY_NONE)
		report_mismatch(ctx, &a, addr, op, sp);
	s = site_stats(&a, key.pid);
	if (s)
		count_block(&s->frees, &s->free_bytes, &s->est_frees, &s->est_free_bytes, a.size, 1);
}

/* Forget a block whose free went unseen (no operator to check). */
static __always_inline void untrack(__u64 addr)
{
	untrack_op(NULL, addr, NO_CHECK, 0);
}

/* The id of the calling user stack in `unwind_stacks` (ids with bit 31
 * set), or LEAKD_ATTACH_CALLER_STACK when, with frame pointers only, rbp
 * cannot be one (see unwind_fp_plausible). Frame-pointer stacks are
 * walked here too, not by bpf_get_stackid: the walk reads a copy of the
 * stack made once (see unwind_copy_stack), where the kernel's walk makes
 * a user read per frame and ends with a faulting one at the outermost
 * frame's rbp (0 or junk): 17 frames cost ~1.1 us there, ~0.5 here
 * (scripts/bench-bpf-cost, fpbuilt/fp). */
static __always_inline long user_stack_id(void *ctx)
{
	struct pt_regs *regs = ctx;
	__u64 pc = PT_REGS_IP(regs), sp = PT_REGS_SP(regs), bp = PT_REGS_FP(regs);
	struct unwind_scratch *s;

	/* Loads from ctx at fixed offsets: clang would otherwise pick the
	 * field by a computed offset, which the verifier refuses. */
	barrier_var(pc);
	barrier_var(sp);
	barrier_var(bp);
	if (unwind_mode == UNWIND_MODE_FP && !unwind_fp_plausible(sp, bp))
		return LEAKD_ATTACH_CALLER_STACK;
	s = unwind_walk(pc, sp, bp, UNWIND_MAX_FRAMES);
	if (!s)
		return -1;
	return unwind_stack_id(s);
}

static __always_inline void on_alloc(void *ctx, __u32 op, __u64 addr, __u64 old_addr,
				     __u64 size, __u64 align, int failed)
{
	struct leakd_attach_block key = block_key(addr);
	struct leakd_attach_alloc a = {};
	struct leakd_attach_stats *s;
	int created = 0;
	long id, err;

	/* realloc frees its argument when it succeeds, and glibc's realloc(p, 0)
	 * frees p and returns NULL. Delete first: the new block may be at the
	 * same address. */
	if (old_addr && (addr || size == 0))
		untrack_op(ctx, old_addr, op, 0);
	if (!addr || failed)
		return;
	if (size < min_size || size > max_size || !sampled(size)) {
		/* Not kept: a block still tracked at this address had its free
		 * go unseen (see the insert below), and no insert will find it.
		 * Only runs that filter pay for the lookup. */
		if (min_size || max_size != ~0ULL || sample_bytes)
			untrack(addr);
		return;
	}
	a.size = size;
	a.ts_ns = bpf_ktime_get_ns();
	/* In the return probe the instruction pointer is the return address. */
	a.caller = PT_REGS_IP((struct pt_regs *)ctx);
	a.op = op;
	/* ...and the user stack walk starts at the caller. */
	id = user_stack_id(ctx);
	if (id < 0) {
		leakd_count_lost(LEAKD_LOST_STACK);
		a.stack_id = LEAKD_ATTACH_NO_STACK;
	} else {
		a.stack_id = id;
	}
	/* Count the alloc before the block can be seen (and freed by another
	 * thread), so its free is never counted before it; take it back if the
	 * block cannot be tracked. */
	s = site_stats_new(&a, key.pid, &created);
	if (!s)
		return; /* counted as map_full: untracked, like a full allocs map */
	if (created)
		note_site_mappings(ctx, a.caller, a.stack_id);
	count_block(&s->allocs, &s->alloc_bytes, &s->est_allocs, &s->est_alloc_bytes, size, 1);
	err = bpf_map_update_elem(&allocs, &key, &a, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* Tracked still, yet malloc hands the address out again: the
		 * block's free went unseen (freed through a path no probe is on).
		 * It is not live: count its free, or its stack's allocs - frees
		 * would no longer be what is outstanding. */
		untrack(addr);
		err = bpf_map_update_elem(&allocs, &key, &a, BPF_ANY);
	}
	if (err) {
		leakd_count_lost(LEAKD_LOST_MAP_FULL);
		count_block(&s->allocs, &s->alloc_bytes, &s->est_allocs, &s->est_alloc_bytes, size, (__u64)-1);
	}
}

static __always_inline void on_free(void *ctx, __u32 op, __u64 addr, __u64 size, __u64 sp)
{
	untrack_op(ctx, addr, op, sp);
}

/* Exec replaces the image: the old one's blocks are gone with its address
 * space, and a block is never freed by another process. Left in `allocs`
 * they would be outstanding forever. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} execs SEC(".maps");

struct exec_scan {
	__u32 pid;
	__u32 found;
};

/* What the walk ended, per CPU. Kept in a map value, not in the walk's
 * context on the stack: the verifier tracks stack scalars exactly, so a
 * counter there would differ at every iteration it explores. */
struct exec_ended {
	__u64 count;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_ended);
} exec_ended SEC(".maps");

static long site_has_blocks(struct bpf_map *map, struct leakd_attach_site *k,
			    struct leakd_attach_stats *v, struct exec_scan *s)
{
	if (k->pid == s->pid && v->allocs != v->frees) {
		s->found = 1;
		return 1; /* stop */
	}
	return 0;
}

static long end_block(struct bpf_map *map, struct leakd_attach_block *k,
		      struct leakd_attach_alloc *v, struct exec_scan *s)
{
	struct leakd_attach_alloc a;
	struct leakd_attach_stats *st;
	struct exec_ended *n;
	__u32 zero = 0;

	if (k->pid != s->pid)
		return 0;
	a = *v;
	/* As in untrack: only a successful delete counts the free. */
	if (bpf_map_delete_elem(&allocs, k))
		return 0;
	st = site_stats(&a, k->pid);
	if (st)
		count_block(&st->frees, &st->free_bytes, &st->est_frees, &st->est_free_bytes, a.size, 1);
	n = bpf_map_lookup_elem(&exec_ended, &zero);
	if (n) {
		n->count++;
		n->bytes += a.size;
	}
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(leakd_attach_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct exec_scan s = { .pid = bpf_get_current_pid_tgid() >> 32 };
	struct leakd_attach_exec *e;
	struct exec_ended *n;
	__u32 zero = 0;

	if (!leakd_wanted())
		return 0;
	/* The sites map is small (bounded by the distinct stacks): walking
	 * the big `allocs` map only for a process that has blocks keeps the
	 * execs of the rest of the system cheap. The other threads are gone
	 * by now (exec kills them first): nothing of the old image allocates
	 * or frees during the walk. */
	bpf_for_each_map_elem(&sites, site_has_blocks, &s, 0);
	if (!s.found)
		return 0;
	n = bpf_map_lookup_elem(&exec_ended, &zero);
	if (!n)
		return 0;
	n->count = 0;
	n->bytes = 0;
	bpf_for_each_map_elem(&allocs, end_block, &s, 0);
	if (!n->count)
		return 0;
	e = bpf_ringbuf_reserve(&execs, sizeof(*e), 0);
	if (!e) {
		leakd_count_lost(LEAKD_LOST_RINGBUF);
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->count = n->count;
	e->bytes = n->bytes;
	e->pid = s.pid;
	e->pad = 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}
