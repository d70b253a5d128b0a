/* Recording, at the moment a stack is first captured, the executable file
 * mappings its frames are in (start, end, file offset, file identity) and
 * each file's path, into maps user space reads when /proc/PID/maps can no
 * longer tell (the contract is in mappings.h).
 *
 * Why here and not in user space: user space reads /proc/PID/maps when it
 * formats a frame, and a process that exits before that (a short command,
 * a -p target or a container that ends mid-trace) has empty maps by then:
 * its frames lose their module. Nothing user space does after the fact
 * closes that race; only the kernel sees the mappings while the stack is
 * taken. The cost is paid once per new stack (the including tool decides
 * what is new: leakd-attach at a site's first block, allocsnoop at a stack
 * hash not seen yet), never on an allocation whose stack was seen before.
 *
 * Paths come from walking the file's dentries and mounts up to the root of
 * the mount namespace (bpf_d_path is not allowed in uprobes), once per
 * file: the path inside a container for a container's process, as
 * /proc/PID/maps prints it. */
#ifndef MAPPINGS_BPF_H
#define MAPPINGS_BPF_H

#include "leakd.bpf.h"
#include "mappings.h"
#include "vma.bpf.h"

/* Path components walked, mount crossings included. */
#define MAPPINGS_DEPTH 64

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAPPINGS_MAX_VMAS);
	__type(key, struct mappings_vma_key);
	__type(value, struct mappings_vma);
} mappings_vmas SEC(".maps");

/* Allocated as files come (a path is 4 KiB): when full, files go without
 * a path and user space has only /proc/PID/maps for them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAPPINGS_MAX_FILES);
	__type(key, struct mappings_file_key);
	__type(value, struct mappings_path);
} mappings_paths SEC(".maps");

/* Bumped whenever an entry is added to either map: user space reads them
 * again only when it changed. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} mappings_gen SEC(".maps");

/* Per CPU: the frames to look up and the path being built (too big for the
 * BPF stack). Uprobes run with preemption disabled: no other use of it on
 * this CPU can interleave. */
struct mappings_scratch {
	__u64 frames[MAPPINGS_MAX_FRAMES];
	__u32 n;
	__u32 pid;
	/* The mapping of the last frame looked up: consecutive frames are
	 * often in the same one. */
	__u64 last_start;
	__u64 last_end;
	/* The path walk: current dentry and mount, and whether it reached the
	 * root. */
	__u64 dentry;
	__u64 mnt;
	__u32 done;
	__u32 added;
	struct mappings_path path;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mappings_scratch);
} mappings_scratch SEC(".maps");

static __always_inline struct mappings_scratch *mappings_scratch_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&mappings_scratch, &zero);
}

/* One step up the path: prepend the dentry's name, or cross to the mount
 * it is mounted on; 1 stops (at the root, or when the path is too long). */
static long mappings_path_step(__u32 i, void *ctx)
{
	struct mappings_scratch *s = mappings_scratch_get();
	struct dentry *d, *parent, *mnt_root;
	struct vfsmount *vfsmnt;
	struct mount *m, *mp;
	const unsigned char *name;
	__u32 len, pos;

	if (!s)
		return 1;
	d = (struct dentry *)s->dentry;
	vfsmnt = (struct vfsmount *)s->mnt;
	mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	parent = BPF_CORE_READ(d, d_parent);
	if (d == mnt_root || d == parent) {
		if (d != mnt_root) {
			s->done = 1; /* the root of a file system outside any mount */
			return 1;
		}
		m = container_of(vfsmnt, struct mount, mnt);
		mp = BPF_CORE_READ(m, mnt_parent);
		if (!mp || mp == m) {
			s->done = 1; /* the root of the namespace (or of a private mount) */
			return 1;
		}
		s->dentry = (__u64)BPF_CORE_READ(m, mnt_mountpoint);
		s->mnt = (__u64)&mp->mnt;
		return 0;
	}
	len = BPF_CORE_READ(d, d_name.len);
	name = BPF_CORE_READ(d, d_name.name);
	pos = s->path.start;
	if (len >= MAPPINGS_NAME_MAX || len + 1 > pos) {
		s->path.cut = 1;
		return 1;
	}
	pos -= len;
	bpf_probe_read_kernel(&s->path.buf[pos & (MAPPINGS_PATH_MAX - 1)],
			      len & (MAPPINGS_NAME_MAX - 1), name);
	pos -= 1;
	s->path.buf[pos & (MAPPINGS_PATH_MAX - 1)] = '/';
	s->path.start = pos;
	s->dentry = (__u64)parent;
	return 0;
}

/* Record the mapping of frame i (and its file's path, once per file). */
static long mappings_frame_step(__u32 i, void *ctx)
{
	struct mappings_scratch *s = mappings_scratch_get();
	struct leakd_vma v = {};
	struct mappings_vma_key k = {};
	struct mappings_vma val = {};
	struct mappings_file_key fk = {};
	struct mappings_vma *old;
	__u32 idx;
	__u64 pc;

	if (!s || i >= s->n || i >= MAPPINGS_MAX_FRAMES)
		return 1;
	/* The barrier keeps clang from dropping the mask as redundant with
	 * the check above, which the verifier does not carry over. */
	idx = i;
	barrier_var(idx);
	pc = s->frames[idx & (MAPPINGS_MAX_FRAMES - 1)];
	if (!pc)
		return 1;
	if (pc >= s->last_start && pc < s->last_end)
		return 0;
	if (!leakd_find_vma(pc, &v))
		return 0;
	s->last_start = v.start;
	s->last_end = v.end;
	if (!v.has_file || !v.exec)
		return 0;
	k.start = v.start;
	k.pid = s->pid;
	val.end = v.end;
	val.pgoff_bytes = v.pgoff_bytes;
	val.ino = v.ino;
	val.dev = v.dev;
	old = bpf_map_lookup_elem(&mappings_vmas, &k);
	if (!old || old->end != val.end || old->pgoff_bytes != val.pgoff_bytes ||
	    old->ino != val.ino || old->dev != val.dev) {
		bpf_map_update_elem(&mappings_vmas, &k, &val, BPF_ANY);
		s->added = 1;
	}
	fk.ino = v.ino;
	fk.dev = v.dev;
	if (bpf_map_lookup_elem(&mappings_paths, &fk))
		return 0;
	s->path.start = MAPPINGS_PATH_MAX;
	s->path.cut = 0;
	s->done = 0;
	s->dentry = v.dentry;
	s->mnt = v.mnt;
	bpf_loop(MAPPINGS_DEPTH, mappings_path_step, NULL, 0);
	if (!s->done)
		s->path.cut = 1;
	bpf_map_update_elem(&mappings_paths, &fk, &s->path, BPF_NOEXIST);
	s->added = 1;
	return 0;
}

/* Record the mappings of s->frames[0..n) of the calling process. */
static __always_inline void mappings_note(struct mappings_scratch *s, __u32 n)
{
	__u32 zero = 0;
	__u64 *gen;

	s->n = n;
	s->pid = bpf_get_current_pid_tgid() >> 32;
	s->last_start = 0;
	s->last_end = 0;
	s->added = 0;
	bpf_loop(MAPPINGS_MAX_FRAMES, mappings_frame_step, NULL, 0);
	if (!s->added)
		return;
	gen = bpf_map_lookup_elem(&mappings_gen, &zero);
	if (gen)
		__sync_fetch_and_add(gen, 1);
}

#endif
