/* allocsnoop's event: the only definition; Rust mirrors it with bindgen.
 * The operation codes (enum alloc_op) are the probe layer's, in alloc.h. */
#ifndef ALLOCSNOOP_H
#define ALLOCSNOOP_H

#define ALLOCSNOOP_MAX_FRAMES 32

struct allocsnoop_event {
	__u64 ts_ns;       /* CLOCK_MONOTONIC */
	__u64 addr;        /* block returned (0 if failed), or freed */
	__u64 old_addr;    /* realloc/reallocarray: the block passed in */
	__u64 size_bytes;  /* requested size (n * size for calloc/reallocarray) */
	__u64 align;       /* aligned APIs */
	__u32 pid;
	__u32 tid;
	__u32 op;          /* enum alloc_op */
	__u32 nr_frames;   /* valid entries of frames[] (0 without --stack) */
	__u8 failed;       /* the call returned NULL / an error */
	__u8 pad[7];
	__u8 comm[16];
	/* frames[0] is the caller (the return address); later ones come from
	 * the frame-pointer walk. Sent only with --stack. */
	__u64 frames[ALLOCSNOOP_MAX_FRAMES];
};

#endif
