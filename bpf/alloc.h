/* The allocation probe layer's contract with user space (the alloc-probes
 * crate, which mirrors it with bindgen): which allocator function fired, as
 * the attach cookie of every probe. Shared by every tool built on
 * alloc.bpf.h; only plain integer types here. */
#ifndef ALLOC_H
#define ALLOC_H

enum alloc_op {
	ALLOC_OP_MALLOC = 0,
	ALLOC_OP_CALLOC = 1,
	ALLOC_OP_REALLOC = 2,
	ALLOC_OP_REALLOCARRAY = 3,
	ALLOC_OP_FREE = 4,
	ALLOC_OP_POSIX_MEMALIGN = 5,
	ALLOC_OP_ALIGNED_ALLOC = 6,
	ALLOC_OP_MEMALIGN = 7,
	ALLOC_OP_VALLOC = 8,
	ALLOC_OP_PVALLOC = 9,
	ALLOC_OP_MMAP = 10,
	ALLOC_OP_MUNMAP = 11,
	ALLOC_OP_MAX = 12,
};

#endif
