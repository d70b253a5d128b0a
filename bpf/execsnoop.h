/* The execsnoop event: the only definition; Rust mirrors it with bindgen. */
#ifndef EXECSNOOP_H
#define EXECSNOOP_H

/* Bytes of argv captured per exec (a power of two: used as a mask; header +
 * args + filename must stay under the 32 KiB per-CPU map value limit). */
#define EXECSNOOP_ARGS_MAX 16384
/* Bytes of the filename captured. */
#define EXECSNOOP_FILENAME_MAX 4096
/* Arguments walked for a failed exec (read from the caller's argv array). */
#define EXECSNOOP_FAILED_ARGV_MAX 256

struct execsnoop_event {
	__u64 ts_ns;        /* CLOCK_MONOTONIC */
	__u64 cgroup_id;
	__u32 pid;          /* tgid after the exec */
	__u32 tid;          /* thread that called exec */
	__u32 ppid;
	__u32 uid;
	__s32 ret;          /* 0 or -errno */
	__u32 args_len;     /* bytes of data[] holding NUL-separated argv */
	__u32 args_total;   /* original argv length in bytes */
	__u32 filename_len; /* bytes after args in data[], without the NUL */
	__u8 args_truncated;
	__u8 pad[7];
	__u8 comm[16];
	/* argv (args_len bytes) followed by the filename (filename_len bytes) */
	__u8 data[EXECSNOOP_ARGS_MAX + EXECSNOOP_FILENAME_MAX];
};

#endif
