/* leakd-attach's kernel/user-space contract: the table of live blocks
 * (`allocs`) and the per-site totals kept in the `sites` hash map. The
 * only definition; Rust mirrors it with bindgen, so only fixed-size
 * integer types here. */
#ifndef LEAKD_ATTACH_H
#define LEAKD_ATTACH_H

/* stack_id when the stack walk failed: the block is grouped by caller. */
#define LEAKD_ATTACH_NO_STACK 0xffffffffU
/* stack_id when the stack is the caller alone, known without a walk (with
 * frame pointers, when rbp cannot be one): no table holds it, and it is
 * no walked stack's id (those have bit 31 set). */
#define LEAKD_ATTACH_CALLER_STACK 0x7fffffffU
/* Capacity of the `unwind_stacks` map (distinct allocating stacks), and of the
 * `sites` map: twice that, since sites without a stack are keyed by caller. */
#define LEAKD_ATTACH_MAX_STACKS 16384
#define LEAKD_ATTACH_MAX_SITES (2 * LEAKD_ATTACH_MAX_STACKS)

/* Entries of the -ln(u) table used to draw exponential sampling intervals,
 * and of the table of g(x) = x / (e^x - 1) used to scale sampled blocks up
 * (x = size / sample_bytes, in steps of 1/LEAKD_ATTACH_G_STEPS). */
#define LEAKD_ATTACH_LN_ENTRIES 4096
#define LEAKD_ATTACH_G_ENTRIES 4096
#define LEAKD_ATTACH_G_STEPS 256
/* Fixed-point unit of the tables and of the estimated counts (1.0). */
#define LEAKD_ATTACH_ONE 65536

/* Live blocks are kept in an open-addressing table (the `allocs` array
 * map, mmapped by user space to read it at report time): an array of
 * buckets, each a cache line of keys followed by their records. A block's
 * key is its address with its process's pid folded in (leakd_attach_key);
 * its home bucket is a hash of the key, and a block whose home bucket is
 * full goes to one of the next LEAKD_ATTACH_WINDOW - 1 buckets (the home
 * bucket's `spill` counts those, so lookups read past the home bucket only
 * when some did). Key 0 is an empty slot, 1 a slot being written. */
#define LEAKD_ATTACH_SLOTS 7
#define LEAKD_ATTACH_WINDOW 8
#define LEAKD_ATTACH_KEY_EMPTY 0
#define LEAKD_ATTACH_KEY_BUSY 1
/* Bits of the pid folded into a key, above bit 47 of the address. */
#define LEAKD_ATTACH_KEY_PID_SHIFT 47
#define LEAKD_ATTACH_KEY_PID_MASK 0x1ffff
/* pid_op: the tgid above these bits, the op (enum alloc_op) in them. A
 * pid is below 2^22 (PID_MAX_LIMIT), so it fits. */
#define LEAKD_ATTACH_OP_BITS 8

/* A live block's record. */
struct leakd_attach_alloc {
	__u64 size;     /* requested size in bytes */
	__u64 ts_ns;    /* CLOCK_MONOTONIC time of the allocation */
	__u64 caller;   /* return address into the allocating function */
	__u32 stack_id; /* id in `unwind_stacks`, or LEAKD_ATTACH_NO_STACK/_CALLER_STACK */
	__u32 pid_op;   /* tgid << LEAKD_ATTACH_OP_BITS | enum alloc_op of the call that made it */
};

/* One bucket of the table: 320 bytes, so with the array's page-aligned
 * values the keys and the spill counter share one cache line. */
struct leakd_attach_bucket {
	__u64 spill;    /* blocks whose home is this bucket, kept in the next ones */
	__u64 keys[LEAKD_ATTACH_SLOTS];
	struct leakd_attach_alloc recs[LEAKD_ATTACH_SLOTS];
	__u64 pad[4];
};

/* One allocation site: what user space groups blocks by. */
struct leakd_attach_site {
	__u64 caller;   /* as in leakd_attach_alloc */
	__u32 stack_id;
	__u32 pid;
};

/* Totals of one site since it was first seen, updated with atomic adds by
 * every alloc and free of a tracked block (so concurrent threads never lose
 * an update). The free fields come first: a reader copies the value front
 * to back, so it reads frees no later than allocs and a block's free is
 * always counted after its alloc, so outstanding (allocs - frees) is never
 * negative in a snapshot. The est_ fields are kept only with sampling:
 * bytes scaled by 1/p(size), counts in units of 1/LEAKD_ATTACH_ONE. */
struct leakd_attach_stats {
	__u64 frees;
	__u64 free_bytes;
	__u64 est_frees;
	__u64 est_free_bytes;
	__u64 allocs;
	__u64 alloc_bytes;
	__u64 est_allocs;
	__u64 est_alloc_bytes;
};

/* The blocks of a process whose image was replaced by exec: they end
 * there (counted as freed), and one of these goes through the `execs` ring
 * buffer for each exec of a process that had any. */
struct leakd_attach_exec {
	__u64 ts_ns;     /* CLOCK_MONOTONIC */
	__u64 count;     /* blocks ended */
	__u64 bytes;     /* their requested sizes, summed */
	__u32 pid;       /* tgid */
	__u32 pad;
	__u8 comm[16];   /* the new image's */
};

/* Frames of a mismatch's free stack (UNWIND_MAX_FRAMES). */
#define LEAKD_ATTACH_MISMATCH_FRAMES 64

/* A tracked block freed with the wrong operator (new[] by delete or free,
 * malloc by delete, new by realloc, ...), through the `mismatches` ring
 * buffer. The allocation's stack is its site's (stack id and caller, as in
 * leakd_attach_alloc); the free's is walked at the free, caller first. */
struct leakd_attach_mismatch {
	__u64 ts_ns;        /* CLOCK_MONOTONIC time of the free */
	__u64 addr;
	__u64 size;         /* the block's requested size */
	__u64 alloc_caller;
	__u32 alloc_stack_id;
	__u32 alloc_op;     /* enum alloc_op */
	__u32 free_op;      /* enum alloc_op */
	__u32 pid;          /* tgid */
	__u32 tid;
	__u32 nr_frames;    /* valid entries of frames[] */
	__u8 comm[16];
	__u64 frames[LEAKD_ATTACH_MISMATCH_FRAMES];
};

#endif
