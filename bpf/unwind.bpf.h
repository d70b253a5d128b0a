/* Walking a user stack with the DWARF rows user space compiled for each
 * mapped file (crates/unwind; the row format is in unwind.h).
 *
 * Why not bpf_get_stack: the kernel walks frame pointers only, and code
 * built without them (distribution libraries, -O2 C, Rust release) loses
 * every frame past the first. Here each step finds the pc's mapping with
 * bpf_find_vma (cached while the walk stays in one mapping), the file's
 * rows by the mapped file's identity (device, inode), the row by binary
 * search on the file offset, and computes the caller's pc/sp/rbp from it.
 * Where a file has no CFI, or a gap has no row, the frame-pointer rule
 * applies (unwind_mode UNWIND_MODE_AUTO) or the walk stops (DWARF). A
 * file with no table loaded yet (dlopen'ed after attach) is reported to
 * user space through `unwind_unknown`, which builds and loads its table.
 *
 * The walk is a bpf_loop over frames, so the verifier checks one step, not
 * UNWIND_MAX_FRAMES copies of it. Its state lives in a per-CPU scratch
 * value (frames do not fit in 512 bytes of BPF stack). Uprobe programs
 * run with migration disabled but may be preempted on a preemptible
 * kernel, and another task's walk on the same CPU would then reuse the
 * scratch: each walk takes a sequence number, checked at every step and at
 * the end, and a walk that finds it changed is given up (its stack counted
 * as lost) rather than returning frames mixed from two stacks.
 *
 * The including file may define UNWIND_STACK_TABLE to get
 * unwind_stack_id(): the stack stored in `unwind_stacks` under a hash of
 * its pcs, as BPF_MAP_TYPE_STACK_TRACE does for frame-pointer stacks. */
#ifndef UNWIND_BPF_H
#define UNWIND_BPF_H

#include "leakd.bpf.h"
#include "unwind.h"
#include "vma.bpf.h"

#define UNWIND_MODE_FP 0
#define UNWIND_MODE_AUTO 1
#define UNWIND_MODE_DWARF 2

/* Set by user space before load (--unwind): FP walks frame pointers only
 * (leakd-attach with unwind_walk; allocsnoop with bpf_get_stack). */
const volatile __u8 unwind_mode = UNWIND_MODE_FP;

/* The largest frame a frame pointer may span: no frame is bigger than
 * the default stack limit. */
#define UNWIND_FP_MAX_FRAME (8ULL << 20)

/* Whether rbp can be the caller's frame pointer, given the stack pointer
 * at the probe: at or above it, within one frame, 8-aligned. The kernel's
 * frame-pointer walk (bpf_get_stack) reads a frame at rbp and on until a
 * read fails; in code built without frame pointers rbp holds anything,
 * often a small integer or 0, and the failing read of an unmapped address
 * is a page fault: ~0.5 us, more than all the rest of a probe, to learn
 * nothing past the caller (scripts/bench-bpf-floor). Without a plausible
 * rbp the stack is the caller alone, known without the walk. */
static __always_inline int unwind_fp_plausible(__u64 sp, __u64 bp)
{
	return bp >= sp && bp - sp < UNWIND_FP_MAX_FRAME && !(bp & 7);
}

/* max_entries set by user space before load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, UNWIND_DEFAULT_ROWS);
	__type(key, __u32);
	__type(value, struct unwind_row);
} unwind_rows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct unwind_module_key);
	__type(value, struct unwind_module);
} unwind_modules SEC(".maps");

/* Files seen in a walk without a table: user space polls this. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct unwind_module_key);
	__type(value, struct unwind_new_module);
} unwind_unknown SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UNWIND_STOP_MAX);
	__type(key, __u32);
	__type(value, __u64);
} unwind_stops SEC(".maps");

/* A mapping and its file's rows. */
struct unwind_vma_slot {
	__u64 vm_start;
	__u64 vm_end;
	__u64 vm_pgoff_bytes;
	struct unwind_module_key key;
	__u32 first;
	__u32 count;
	__u32 has_file;  /* the mapping is a file's */
	__u32 has_table; /* that file's rows are loaded (count may be 0) */
};

/* Bytes of the user stack copied at the start of a walk. */
#define UNWIND_STACK_COPY 2048

/* Mappings kept from walk to walk (per CPU), while the process's mappings
 * have not changed: bpf_find_vma then runs only when a walk enters a
 * mapping none of the last ones covers. */
#define UNWIND_VMA_SLOTS 4

struct unwind_scratch {
	__u64 pc;
	__u64 sp;
	__u64 bp;
	/* The mapping the last pc was in, and its file's rows (the fields of
	 * struct unwind_vma_slot, in its order). */
	__u64 vm_start;
	__u64 vm_end;
	__u64 vm_pgoff_bytes;
	struct unwind_module_key key;
	__u32 first;
	__u32 count;
	__u32 has_file;
	__u32 has_table;
	/* Whose mappings the slots are: the mm, and its mmap_lock sequence
	 * (bumped by every change to its mappings) when they were found. */
	__u64 cache_mm;
	__u32 cache_seq;
	__u32 cache_next;
	struct unwind_vma_slot vmas[UNWIND_VMA_SLOTS];
	__u32 n;         /* frames written */
	__u32 max;       /* frames wanted */
	__u32 stop;      /* enum unwind_stop, once stopped */
	__u32 pid;
	__u32 lo, hi; /* binary search bounds */
	__u64 off;    /* file offset searched for */
	__u64 hash;
	__u64 walk_seq; /* bumped by every walk on this CPU */
	__u64 frames[UNWIND_MAX_FRAMES];
	/* The stack from stk_base, copied once per walk (see unwind_read). */
	__u64 stk_base;
	__u32 stk_len; /* bytes copied, a multiple of 8 */
	__u32 stk_pad;
	__u64 stk[UNWIND_STACK_COPY / 8];
};

/* The walk's own state, on its BPF stack (bpf_loop's context). */
struct unwind_walk_ctx {
	__u64 seq;
	__u32 interrupted;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct unwind_scratch);
} unwind_scratch SEC(".maps");

static __always_inline struct unwind_scratch *unwind_scratch_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&unwind_scratch, &zero);
}

/* Point the scratch at a kept mapping holding `pc`; 0 if none does. */
static __always_inline int unwind_cached_vma(struct unwind_scratch *s, __u64 pc)
{
	int i;

	for (i = 0; i < UNWIND_VMA_SLOTS; i++) {
		struct unwind_vma_slot *v = &s->vmas[i];

		if (pc >= v->vm_start && pc < v->vm_end) {
			__builtin_memcpy(&s->vm_start, v, sizeof(*v));
			return 1;
		}
	}
	return 0;
}

/* Keep the current mapping for later walks: unless its file's table is
 * still to come (a library just dlopen'ed), which must be looked up again. */
static __always_inline void unwind_keep_vma(struct unwind_scratch *s)
{
	__u32 i = s->cache_next++ & (UNWIND_VMA_SLOTS - 1);

	if (s->has_file && !s->has_table)
		return;
	__builtin_memcpy(&s->vmas[i], &s->vm_start, sizeof(s->vmas[i]));
}

/* Point the scratch at the mapping of `pc` and its rows; 0 if none. */
static __always_inline int unwind_enter_vma(struct unwind_scratch *s, __u64 pc)
{
	struct leakd_vma v = {};
	struct unwind_module *m;
	struct unwind_new_module nm = {};

	if (!leakd_find_vma(pc, &v))
		return 0;
	s->vm_start = v.start;
	s->vm_end = v.end;
	s->vm_pgoff_bytes = v.pgoff_bytes;
	s->has_file = v.has_file;
	s->has_table = 0;
	s->count = 0;
	if (!v.has_file) {
		unwind_keep_vma(s);
		return 1;
	}
	s->key.ino = v.ino;
	s->key.dev = v.dev;
	s->key.pad = 0;
	m = bpf_map_lookup_elem(&unwind_modules, &s->key);
	if (m) {
		s->has_table = 1;
		s->first = m->first;
		s->count = m->count;
		unwind_keep_vma(s);
		return 1;
	}
	/* Ask user space for this file's rows (once: NOEXIST). */
	nm.key = s->key;
	nm.vm_start = v.start;
	nm.vm_pgoff = v.pgoff_bytes;
	nm.pid = s->pid;
	bpf_map_update_elem(&unwind_unknown, &s->key, &nm, BPF_NOEXIST);
	return 1;
}

/* One step of the binary search for the last row with pc <= s->off:
 * invariant rows[lo-1].pc <= off (or lo = 0), rows[hi].pc > off (or hi =
 * count). A bpf_loop callback, not an unrolled loop: with lo and hi kept
 * in the map value the verifier checks one step, where a loop over stack
 * variables would make it follow every path through 24 branches. */
static long unwind_search_step(__u32 i, void *ctx)
{
	struct unwind_scratch *s = unwind_scratch_get();
	struct unwind_row *r;
	__u32 mid, idx;

	if (!s || s->lo >= s->hi)
		return 1;
	mid = s->lo + (s->hi - s->lo) / 2;
	idx = s->first + mid;
	r = bpf_map_lookup_elem(&unwind_rows, &idx);
	if (!r) {
		s->lo = 0;
		s->hi = 0;
		return 1;
	}
	if (r->pc <= s->off)
		s->lo = mid + 1;
	else
		s->hi = mid;
	return 0;
}

/* Rows found lately, per CPU, by (file, offset): a program's allocations
 * come from a few call paths, so most frames of a walk were walked before,
 * and one lookup here replaces a binary search of ~20 steps. Rows never
 * change once loaded, so entries never go stale (a row of kind
 * UNWIND_NONE records "no row"). */
#define UNWIND_CACHE_SIZE 4096

struct unwind_cache_entry {
	__u64 ino;
	__u32 dev;
	__u32 off;
	struct unwind_row row;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UNWIND_CACHE_SIZE);
	__type(key, __u32);
	__type(value, struct unwind_cache_entry);
} unwind_cache SEC(".maps");

/* The row for file offset `off` among the current file's rows (a row of
 * kind UNWIND_NONE when there is none), or NULL. */
static __always_inline struct unwind_row *unwind_find_row(struct unwind_scratch *s, __u64 off)
{
	struct unwind_cache_entry *c;
	struct unwind_row *r;
	__u32 idx, slot;

	if (off > 0xffffffffULL || !s->count)
		return NULL;
	slot = (__u32)((off ^ (s->key.ino * 0x9e3779b97f4a7c15ULL)) * 0x9e3779b97f4a7c15ULL >> 40);
	slot &= UNWIND_CACHE_SIZE - 1;
	c = bpf_map_lookup_elem(&unwind_cache, &slot);
	if (!c)
		return NULL;
	if (c->ino == s->key.ino && c->dev == s->key.dev && c->off == (__u32)off && c->row.pc)
		return &c->row;
	s->off = off;
	s->lo = 0;
	s->hi = s->count;
	bpf_loop(UNWIND_SEARCH_STEPS, unwind_search_step, NULL, 0);
	if (s->lo == 0 || s->lo < s->hi) {
		/* Before the first row: no rule here. pc 1 marks the entry valid. */
		c->row.pc = 1;
		c->row.kind = UNWIND_NONE;
		c->row.cfa_off = 0;
		c->row.rbp_off = 0;
	} else {
		idx = s->first + s->lo - 1;
		r = bpf_map_lookup_elem(&unwind_rows, &idx);
		if (!r)
			return NULL;
		c->row = *r;
		/* A row at file offset 0 would read as empty: mark it valid. */
		if (!c->row.pc)
			c->row.pc = 1;
	}
	c->ino = s->key.ino;
	c->dev = s->key.dev;
	c->off = (__u32)off;
	return &c->row;
}

static __always_inline void unwind_count_stop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&unwind_stops, &reason);

	if (n)
		*n += 1;
}

/* Copy the stack from sp up, once per walk: a user read costs the same
 * ~70 ns for 8 bytes or 2 KiB here (the fault-safe copy's setup, not the
 * bytes), and was nearly all of a frame's cost with one read per frame
 * (scripts/bench-bpf-floor). A read past the end of the stack's mapping
 * would fault and copy nothing, so the copy stops at the top of the main
 * thread's stack (its environment strings end just below the mapping's
 * end); other threads' stacks have glibc's thread descriptor (over 2 KiB)
 * above their outermost frame. Words the copy does not hold are read on
 * their own, as before. */
static __always_inline void unwind_copy_stack(struct unwind_scratch *s, __u64 sp)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct mm_struct *mm = t->mm;
	__u64 base = sp & ~7ULL, top = mm ? mm->env_end : 0, len = UNWIND_STACK_COPY;

	if (base < top && top - base < UNWIND_STACK_COPY)
		len = (top - base) & ~7ULL;
	s->stk_base = base;
	s->stk_len = 0;
	if (!len || len > UNWIND_STACK_COPY)
		return;
	if (!bpf_probe_read_user(s->stk, len, (void *)base)) {
		s->stk_len = len;
		return;
	}
	/* Past the end of a stack of another kind (a coroutine's, say): the
	 * rest of sp's page is there. */
	len = 4096 - (base & 4095);
	if (len < UNWIND_STACK_COPY && !bpf_probe_read_user(s->stk, len, (void *)base))
		s->stk_len = len;
}

/* Read a word of the user stack, from the copy when it holds it; nonzero
 * on a fault. */
static __always_inline int unwind_read(struct unwind_scratch *s, __u64 addr, __u64 *v)
{
	__u64 off = addr - s->stk_base;

	if (addr >= s->stk_base && off < s->stk_len && !(off & 7)) {
		*v = s->stk[(off / 8) & (UNWIND_STACK_COPY / 8 - 1)];
		return 0;
	}
	return bpf_probe_read_user(v, sizeof(*v), (void *)addr);
}

/* One frame: record s->pc, then find the caller's pc/sp/rbp. 1 stops. */
static long unwind_step(__u32 i, void *ctx)
{
	struct unwind_scratch *s = unwind_scratch_get();
	struct unwind_walk_ctx *w = ctx;
	struct unwind_row *r;
	__u64 pc, look, cfa, ra, bp;
	__u32 n;

	if (!s)
		return 1;
	if (s->walk_seq != w->seq) {
		w->interrupted = 1;
		return 1;
	}
	n = s->n;
	if (n >= s->max || n >= UNWIND_MAX_FRAMES) {
		s->stop = UNWIND_STOP_DEPTH;
		return 1;
	}
	pc = s->pc;
	s->frames[n & (UNWIND_MAX_FRAMES - 1)] = pc;
	s->n = n + 1;
	s->hash = (s->hash ^ pc) * 0x100000001b3ULL;

	/* Frame pointers only: no mapping or row to find. */
	if (unwind_mode == UNWIND_MODE_FP)
		goto fp;
	/* Return addresses: the call is the instruction before. */
	look = pc - 1;
	if (look < s->vm_start || look >= s->vm_end) {
		if (!unwind_cached_vma(s, look) && !unwind_enter_vma(s, look)) {
			s->stop = UNWIND_STOP_NO_VMA;
			return 1;
		}
	}
	if (!s->has_file) {
		s->stop = UNWIND_STOP_ANON;
		return 1;
	}
	r = s->has_table ? unwind_find_row(s, look - s->vm_start + s->vm_pgoff_bytes) : NULL;
	if (!r || r->kind == UNWIND_NONE) {
		if (unwind_mode == UNWIND_MODE_DWARF) {
			s->stop = UNWIND_STOP_NO_ROW;
			return 1;
		}
fp:
		/* Frame pointers: [rbp] = caller's rbp, [rbp+8] = return address.
		 * An rbp below the frame's sp, or far above it, is no frame
		 * pointer: reading there would often fault (~0.5 us) or walk
		 * junk. */
		bp = s->bp;
		if (!bp || !unwind_fp_plausible(s->sp, bp)) {
			s->stop = UNWIND_STOP_END;
			return 1;
		}
		if (unwind_read(s, bp + 8, &ra) || unwind_read(s, bp, &s->bp)) {
			s->stop = UNWIND_STOP_READ;
			return 1;
		}
		s->sp = bp + 16;
		goto next;
	}
	switch (r->kind) {
	case UNWIND_CFA_RSP:
		cfa = s->sp + r->cfa_off;
		break;
	case UNWIND_CFA_RBP:
		cfa = s->bp + r->cfa_off;
		break;
	case UNWIND_PLT:
		cfa = s->sp + 8 + ((pc & 15) >= r->cfa_off ? 8 : 0);
		break;
	case UNWIND_END:
		s->stop = UNWIND_STOP_END;
		return 1;
	default:
		s->stop = UNWIND_STOP_UNSUPPORTED;
		return 1;
	}
	if (unwind_read(s, cfa - 8, &ra)) {
		s->stop = UNWIND_STOP_READ;
		return 1;
	}
	if (r->rbp_off && unwind_read(s, cfa + (__s64)r->rbp_off * 8, &s->bp)) {
		s->stop = UNWIND_STOP_READ;
		return 1;
	}
	s->sp = cfa;
next:
	if (!ra) {
		s->stop = UNWIND_STOP_END;
		return 1;
	}
	s->pc = ra;
	return 0;
}

/* Forget the kept mappings unless they are this process's and its
 * mappings have not changed since (an odd sequence: being changed now). */
static __always_inline void unwind_check_vmas(struct unwind_scratch *s)
{
	struct task_struct *t = bpf_get_current_task_btf();
	__u64 mm = (__u64)BPF_CORE_READ(t, mm);
	__u32 seq = 1, i;

	if (bpf_core_field_exists(((struct mm_struct *)0)->mm_lock_seq))
		seq = BPF_CORE_READ(t, mm, mm_lock_seq.sequence);
	if (mm == s->cache_mm && seq == s->cache_seq && !(seq & 1))
		return;
	for (i = 0; i < UNWIND_VMA_SLOTS; i++) {
		s->vmas[i].vm_start = 0;
		s->vmas[i].vm_end = 0;
	}
	s->cache_mm = mm;
	s->cache_seq = seq;
}

/* Walk from a caller's state (pc = a return address into it, its sp and
 * rbp) into the scratch's frames; returns the scratch (frames[0..n)) or
 * NULL. */
static __always_inline struct unwind_scratch *unwind_walk(__u64 pc, __u64 sp, __u64 bp, __u32 max)
{
	struct unwind_scratch *s = unwind_scratch_get();
	struct unwind_walk_ctx w = {};

	if (!s)
		return NULL;
	w.seq = ++s->walk_seq;
	s->pc = pc;
	s->sp = sp;
	s->bp = bp;
	s->vm_start = 0;
	s->vm_end = 0;
	unwind_check_vmas(s);
	s->n = 0;
	s->max = max;
	s->stop = UNWIND_STOP_DEPTH;
	s->pid = bpf_get_current_pid_tgid() >> 32;
	s->hash = 0xcbf29ce484222325ULL;
	unwind_copy_stack(s, sp);
	bpf_loop(UNWIND_MAX_FRAMES, unwind_step, &w, 0);
	if (w.interrupted || s->walk_seq != w.seq) {
		unwind_count_stop(UNWIND_STOP_INTERRUPTED);
		return NULL;
	}
	unwind_count_stop(s->stop);
	return s;
}

#ifdef UNWIND_STACK_TABLE
/* Stacks walked with the rows, stored as BPF_MAP_TYPE_STACK_TRACE stores
 * frame-pointer stacks: by id, frames zero-terminated. The id is a hash of
 * the pcs with bit 31 set (stack trace ids are small); a different stack
 * with the same hash is not stored (-EEXIST), as with STACK_TRACE. */
struct unwind_stack {
	__u64 ips[UNWIND_MAX_FRAMES];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, UNWIND_STACK_TABLE);
	__type(key, __u32);
	__type(value, struct unwind_stack);
} unwind_stacks SEC(".maps");

#define UNWIND_STACK_ID_BIT 0x80000000U

/* The id of the stack walked into `s`, or a negative error. */
static __always_inline long unwind_stack_id(struct unwind_scratch *s)
{
	__u32 id, n = s->n, i;
	struct unwind_stack *st;
	long err;

	if (n > UNWIND_MAX_FRAMES)
		return -1;
	if (n < UNWIND_MAX_FRAMES)
		s->frames[n & (UNWIND_MAX_FRAMES - 1)] = 0;
	id = (__u32)(s->hash ^ (s->hash >> 32));
	id |= UNWIND_STACK_ID_BIT;
	if (id == 0xffffffffU)
		id = 0xfffffffeU; /* LEAKD_ATTACH_NO_STACK */
	st = bpf_map_lookup_elem(&unwind_stacks, &id);
	if (!st) {
		/* frames[] is laid out as struct unwind_stack: the tail past n
		 * may hold an older walk's pcs, after the 0 terminator. */
		err = bpf_map_update_elem(&unwind_stacks, &id, s->frames, BPF_NOEXIST);
		if (err && err != -17 /* EEXIST: another CPU stored it */)
			return err;
		if (!err)
			return id;
		st = bpf_map_lookup_elem(&unwind_stacks, &id);
		if (!st)
			return -1;
	}
	/* Same hash: the same stack, unless a collision. */
	for (i = 0; i < UNWIND_MAX_FRAMES; i++) {
		if (i > n)
			break;
		if (st->ips[i] != s->frames[i])
			return -17;
		if (i == n)
			break;
	}
	return id;
}
#endif

#endif
