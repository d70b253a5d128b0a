/* The mappings of code that stack frames were captured in, recorded by BPF
 * while the process is alive (bpf/mappings.bpf.h), so user space can still
 * turn a frame into (module, file offset) after the process exited, when
 * /proc/PID/maps reads empty. The only definition; Rust mirrors it with
 * bindgen (crates/common), so only fixed-size integer types here. */
#ifndef MAPPINGS_H
#define MAPPINGS_H

/* Longest path kept (longer ones are cut at their start, see `cut`). */
#define MAPPINGS_PATH_MAX 4096
/* Longest file name component. */
#define MAPPINGS_NAME_MAX 256
/* Most frames of one stack looked up. */
#define MAPPINGS_MAX_FRAMES 128
/* Mappings kept (LRU: the least used go first) and files kept. */
#define MAPPINGS_MAX_VMAS 16384
#define MAPPINGS_MAX_FILES 4096

/* An executable file mapping of a process, by its start address. */
struct mappings_vma_key {
	__u64 start;
	__u32 pid; /* tgid */
	__u32 pad;
};

struct mappings_vma {
	__u64 end;
	__u64 pgoff_bytes; /* file offset of start */
	__u64 ino;
	__u32 dev;         /* kernel encoding: major << 20 | minor */
	__u32 pad;
};

/* A mapped file, by its identity (as the unwinder keys it). */
struct mappings_file_key {
	__u64 ino;
	__u32 dev;
	__u32 pad;
};

/* A file's path as its process sees it (from the root of its mount
 * namespace): bytes buf[start, MAPPINGS_PATH_MAX), no NUL.
 * cut: components were left out at the start (too deep or too long). */
struct mappings_path {
	__u32 start;
	__u32 cut;
	__u8 buf[MAPPINGS_PATH_MAX + MAPPINGS_NAME_MAX];
};

#endif
