/* leakd-attach: keep every live heap block in a table ((process, address)
 * -> size, time, stack id) instead of streaming events. Frees delete
 * entries, so the table *is* the set of outstanding allocations and user
 * space only has to read it at report time: the cost per call is one
 * insert or delete, with nothing crossing to user space. The probe logic
 * (which calls nest, realloc semantics) lives in alloc.bpf.h.
 *
 * Why a table of our own and not a BPF hash map: a preallocated hash map's
 * update + lookup + delete cost ~270 ns per malloc+free pair here (the
 * element free list, the bucket lock, the hash of a 16-byte key, an
 * out-of-line call each; scripts/bench-bpf-floor), as much as the rest of
 * the tracking together. The table is an array map, whose lookups the
 * verifier inlines, laid out as set-associative buckets (see
 * leakd-attach.h) and updated lock-free with compare-and-swap: a block's
 * insert or delete reads one cache line of keys and writes its slot.
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

/* The live-block table publishes a record by x86's store order (see
 * bucket_claim). */
#ifndef __TARGET_ARCH_x86
#error "leakd-attach's table relies on x86's store order: see bucket_claim"
#endif

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

/* The live blocks (see leakd-attach.h): table_buckets home buckets, then
 * LEAKD_ATTACH_WINDOW - 1 more that only take spilled blocks, so a window
 * never wraps. max_entries (home buckets + window - 1) and table_buckets
 * are set by user space from --max-allocs before load: at least twice as
 * many slots as blocks tracked, so windows rarely fill. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct leakd_attach_bucket);
} allocs SEC(".maps");

const volatile __u32 table_buckets = 1;
/* Most blocks tracked at once (--max-allocs). */
const volatile __u64 max_allocs = 1;

/* Blocks tracked now: what keeps the count within max_allocs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} allocs_live SEC(".maps");

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

/* The table key of process pid's block at `addr`: exact for a given pid
 * (user addresses are below 2^47; the record's pid tells processes whose
 * pids agree in the folded bits apart). Folding the pid in spreads the same
 * address in several processes (forked, not exec'ed) over buckets. */
static __always_inline __u64 table_key(__u64 addr, __u32 pid)
{
	return addr ^ ((__u64)(pid & LEAKD_ATTACH_KEY_PID_MASK) << LEAKD_ATTACH_KEY_PID_SHIFT);
}

/* A key's home bucket: a multiplicative hash, reduced to [0, table_buckets)
 * by a multiply-shift (no power-of-two table size needed). */
static __always_inline __u32 home_bucket(__u64 key)
{
	__u64 h = (key * 0x9e3779b97f4a7c15ULL) >> 32;

	return (h * table_buckets) >> 32;
}

static __always_inline struct leakd_attach_bucket *bucket_at(__u32 i)
{
	return bpf_map_lookup_elem(&allocs, &i);
}

static __always_inline __u32 rec_pid(const struct leakd_attach_alloc *a)
{
	return a->pid_op >> LEAKD_ATTACH_OP_BITS;
}

static __always_inline __u32 rec_op(const struct leakd_attach_alloc *a)
{
	return a->pid_op & ((1U << LEAKD_ATTACH_OP_BITS) - 1);
}

/* Where a block is: its bucket, slot, and its home bucket (the same one
 * unless it spilled). */
struct slot_ref {
	struct leakd_attach_bucket *b;
	struct leakd_attach_bucket *home;
	__u32 i;
};

/* The slot of bucket b holding (key, pid), or -1. A key is read once
 * (READ_ONCE: other CPUs write it); the record's pid is read after it. */
static __always_inline int slot_of(struct leakd_attach_bucket *b, __u64 key, __u32 pid)
{
	int i;

#pragma unroll
	for (i = 0; i < LEAKD_ATTACH_SLOTS; i++) {
		if (*(volatile __u64 *)&b->keys[i] == key && rec_pid(&b->recs[i]) == pid)
			return i;
	}
	return -1;
}

/* Find process pid's block with `key` (home bucket first, the rest of the
 * window only when blocks spilled from home). */
static __always_inline int table_find(__u64 key, __u32 pid, struct slot_ref *r)
{
	struct leakd_attach_bucket *b;
	__u32 home = home_bucket(key), d;
	int i;

	if (key <= LEAKD_ATTACH_KEY_BUSY)
		return 0; /* never inserted */
	r->home = bucket_at(home);
	if (!r->home)
		return 0;
	i = slot_of(r->home, key, pid);
	if (i >= 0) {
		r->b = r->home;
		r->i = i;
		return 1;
	}
	if (!*(volatile __u64 *)&r->home->spill)
		return 0;
	for (d = 1; d < LEAKD_ATTACH_WINDOW; d++) {
		b = bucket_at(home + d);
		if (!b)
			return 0;
		i = slot_of(b, key, pid);
		if (i >= 0) {
			r->b = b;
			r->i = i;
			return 1;
		}
	}
	return 0;
}

static __always_inline void live_add(__u64 n)
{
	__u32 zero = 0;
	__u64 *live = bpf_map_lookup_elem(&allocs_live, &zero);

	if (live)
		__sync_fetch_and_add(live, n);
}

/* Take the block at r out of the table, copying its record to *a first;
 * 0 when another CPU took it first. Only the caller whose compare-and-swap
 * succeeds counts the free, so a double free racing on two threads counts
 * once. The copy is made before the swap (after it the slot may be reused
 * at once); it is the block's record unless, between the two, the block
 * was freed and the same address allocated again in the same process and
 * put back in the same slot: that needs a second free of the block racing
 * with this one (a double free in the traced program), and then costs
 * this free the new block's record (size, stack) instead of its own. */
static __always_inline int table_take(struct slot_ref *r, __u64 key,
				      struct leakd_attach_alloc *a)
{
	__u32 i = r->i;

	if (i >= LEAKD_ATTACH_SLOTS)
		return 0;
	*a = r->b->recs[i];
	if (__sync_val_compare_and_swap(&r->b->keys[i], key, LEAKD_ATTACH_KEY_EMPTY) != key)
		return 0;
	if (r->b != r->home)
		__sync_fetch_and_add(&r->home->spill, -1);
	live_add(-1);
	return 1;
}

/* Claim an empty slot of bucket b for record a and publish it with key:
 * the slot is claimed (0 -> 1) so no other CPU writes it, the record
 * written, then the key set with an atomic exchange, which orders the
 * record's stores before it for any reader of the key. The record's time
 * is written last: it is the slot's generation for user space, which
 * reads the table while it changes (crates/leakd-attach/src/table.rs:
 * a freed block's address allocated again puts the same key back). */
static __always_inline int bucket_claim(struct leakd_attach_bucket *b, __u64 key,
					const struct leakd_attach_alloc *a)
{
	int i;

#pragma unroll
	for (i = 0; i < LEAKD_ATTACH_SLOTS; i++) {
		if (*(volatile __u64 *)&b->keys[i] != LEAKD_ATTACH_KEY_EMPTY)
			continue;
		if (__sync_val_compare_and_swap(&b->keys[i], LEAKD_ATTACH_KEY_EMPTY,
						LEAKD_ATTACH_KEY_BUSY) != LEAKD_ATTACH_KEY_EMPTY)
			continue;
		b->recs[i].size = a->size;
		b->recs[i].caller = a->caller;
		b->recs[i].stack_id = a->stack_id;
		b->recs[i].pid_op = a->pid_op;
		/* The barrier orders the compiler only: the CPU keeps the record's
		 * stores before ts_ns's because x86 keeps stores in order (TSO),
		 * which user space's reader relies on (crates/leakd-attach's
		 * table.rs). A weakly ordered CPU would need ts_ns stored with a
		 * fully ordered atomic; hence the #error at the top. */
		asm volatile("" ::: "memory");
		*(volatile __u64 *)&b->recs[i].ts_ns = a->ts_ns;
		__sync_lock_test_and_set(&b->keys[i], key);
		return 1;
	}
	return 0;
}

/* Insert process pid's block with key (not in the table: the caller
 * checked), within max_allocs: home bucket first, else the next free slot
 * of the window. 0 when full. */
static __always_inline int table_insert(__u64 key, __u32 pid, const struct leakd_attach_alloc *a)
{
	struct leakd_attach_bucket *home, *b;
	__u32 h = home_bucket(key), d, zero = 0;
	__u64 *live;

	if (key <= LEAKD_ATTACH_KEY_BUSY)
		return 0; /* a reserved key: an address above 2^47 */
	home = bucket_at(h);
	live = bpf_map_lookup_elem(&allocs_live, &zero);
	if (!home || !live)
		return 0;
	if (__sync_fetch_and_add(live, 1) >= max_allocs)
		goto full;
	if (bucket_claim(home, key, a))
		return 1;
	/* Counted before the block can be found there, so no lookup of it
	 * stops at its home bucket. */
	__sync_fetch_and_add(&home->spill, 1);
	for (d = 1; d < LEAKD_ATTACH_WINDOW; d++) {
		b = bucket_at(h + d);
		if (!b)
			break;
		if (bucket_claim(b, key, a))
			return 1;
	}
	__sync_fetch_and_add(&home->spill, -1);
full:
	__sync_fetch_and_add(live, -1);
	return 0;
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
	e->alloc_op = rec_op(a);
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
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u64 key = table_key(addr, pid);
	struct leakd_attach_alloc a;
	struct leakd_attach_stats *s;
	struct slot_ref r;

	if (!table_find(key, pid, &r))
		return; /* not tracked: before we attached, filtered out or not sampled */
	if (!table_take(&r, key, &a))
		return; /* taken by a racing free of the same block */
	/* Before the free is counted: a site whose frees are all counted may
	 * have its stack deleted by user space, which reads this ring first. */
	if (op_family(rec_op(&a)) != op_family(op) && op_family(rec_op(&a)) != FAMILY_NONE &&
	    op_family(op) != FAMILY_NONE)
		report_mismatch(ctx, &a, addr, op, sp);
	s = site_stats(&a, pid);
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
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	struct leakd_attach_alloc a = {};
	struct leakd_attach_stats *s;
	int created = 0;
	long id;

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
	a.pid_op = pid << LEAKD_ATTACH_OP_BITS | op;
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
	s = site_stats_new(&a, pid, &created);
	if (!s)
		return; /* counted as map_full: untracked, like a full allocs map */
	if (created)
		note_site_mappings(ctx, a.caller, a.stack_id);
	count_block(&s->allocs, &s->alloc_bytes, &s->est_allocs, &s->est_alloc_bytes, size, 1);
	/* Tracked still, yet malloc hands the address out again: the block's
	 * free went unseen (freed through a path no probe is on). It is not
	 * live: count its free, or its stack's allocs - frees would no longer
	 * be what is outstanding. (The lookup reads the home bucket's keys,
	 * which the insert reads next anyway.) */
	untrack(addr);
	if (!table_insert(table_key(addr, pid), pid, &a)) {
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

/* End the blocks of process s->pid in one bucket (index *idx). */
static long end_bucket(struct bpf_map *map, __u32 *idx, struct leakd_attach_bucket *b,
		       struct exec_scan *s)
{
	struct leakd_attach_alloc a;
	struct leakd_attach_stats *st;
	struct exec_ended *n;
	struct slot_ref r;
	__u32 zero = 0;
	__u64 key;
	int i;

	for (i = 0; i < LEAKD_ATTACH_SLOTS; i++) {
		key = *(volatile __u64 *)&b->keys[i];
		if (key <= LEAKD_ATTACH_KEY_BUSY || rec_pid(&b->recs[i]) != s->pid)
			continue;
		r.b = b;
		r.i = i;
		r.home = b;
		if (home_bucket(key) != *idx) {
			r.home = bucket_at(home_bucket(key));
			if (!r.home)
				continue;
		}
		/* As in untrack: only a successful take counts the free. */
		if (!table_take(&r, key, &a))
			continue;
		st = site_stats(&a, s->pid);
		if (st)
			count_block(&st->frees, &st->free_bytes, &st->est_frees,
				    &st->est_free_bytes, a.size, 1);
		n = bpf_map_lookup_elem(&exec_ended, &zero);
		if (n) {
			n->count++;
			n->bytes += a.size;
		}
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
	 * the big `allocs` table only for a process that has blocks keeps the
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
	bpf_for_each_map_elem(&allocs, end_bucket, &s, 0);
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
