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
	/* C++: every operator new / new[] (plain, nothrow, align_val_t) and
	 * delete / delete[] (plain, sized, aligned, nothrow). */
	ALLOC_OP_NEW = 12,
	ALLOC_OP_NEW_ARRAY = 13,
	ALLOC_OP_DELETE = 14,
	ALLOC_OP_DELETE_ARRAY = 15,
	ALLOC_OP_MAX = 16,
};

/* The attach cookie is the op, plus flags in the bits above it. */
#define ALLOC_COOKIE_OP_MASK 0xff
/* An operator new taking std::align_val_t (the alignment in arg 2). */
#define ALLOC_COOKIE_ALIGNED 0x100

#endif
