/* The mapping that holds a code address, as bpf_find_vma reads it: one
 * reading shared by the stack walker (unwind.bpf.h: which file's rows
 * apply) and the mapping recorder (mappings.bpf.h: which file a frame is
 * in, and its path), which ask the kernel the same question. */
#ifndef VMA_BPF_H
#define VMA_BPF_H

#include "leakd.bpf.h"

#ifndef container_of
#define container_of(ptr, type, member) ((type *)((void *)(ptr) - __builtin_offsetof(type, member)))
#endif

#define LEAKD_VM_EXEC 0x4
/* include/linux/fs.h since 6.13: the file is embedded in a struct
 * backing_file (overlayfs maps its layers' files so). */
#define LEAKD_FMODE_BACKING (1U << 24)

/* What bpf_find_vma's callback hands back (its context must be on the
 * stack). */
struct leakd_vma {
	__u64 start;
	__u64 end;
	__u64 pgoff_bytes;
	__u64 ino;
	/* The path the process opened, as /proc/PID/maps prints it. */
	__u64 dentry;
	__u64 mnt;
	__u32 dev;
	__u32 has_file;
	__u32 exec;
	__u32 pad;
};

static long leakd_vma_cb(struct task_struct *task, struct vm_area_struct *vma, void *data)
{
	struct leakd_vma *v = data;
	struct file *f = BPF_CORE_READ(vma, vm_file);

	v->start = BPF_CORE_READ(vma, vm_start);
	v->end = BPF_CORE_READ(vma, vm_end);
	v->pgoff_bytes = BPF_CORE_READ(vma, vm_pgoff) << 12;
	if (!f)
		return 0;
	v->has_file = 1;
	v->exec = !!(BPF_CORE_READ(vma, __vm_flags) & LEAKD_VM_EXEC);
	v->ino = BPF_CORE_READ(f, f_inode, i_ino);
	v->dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
	/* For an overlayfs file, the overlay's path, not the layer's (a
	 * layer's private mount has the layer's root for root). */
	if (BPF_CORE_READ(f, f_mode) & LEAKD_FMODE_BACKING) {
		struct backing_file *bf = container_of(f, struct backing_file, file);

		v->dentry = (__u64)BPF_CORE_READ(bf, user_path.dentry);
		v->mnt = (__u64)BPF_CORE_READ(bf, user_path.mnt);
	} else {
		v->dentry = (__u64)BPF_CORE_READ(f, f_path.dentry);
		v->mnt = (__u64)BPF_CORE_READ(f, f_path.mnt);
	}
	return 0;
}

/* The current task's mapping of `pc` into *v; 0 when none holds it. */
static __always_inline int leakd_find_vma(__u64 pc, struct leakd_vma *v)
{
	return !bpf_find_vma(bpf_get_current_task_btf(), pc, leakd_vma_cb, v, 0) && v->end;
}

#endif
