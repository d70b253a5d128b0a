/* execsnoop: every exec, with the argv the new program really received.
 *
 * Successful execs are reported at sched_process_exec, reading argv from the
 * *new* mm (mm->arg_start..arg_end): the kernel has just written those pages,
 * so they are always present. Peers read the caller's argv at sys_enter, where
 * a not-yet-faulted page yields an empty argv. Failed execs never reach
 * sched_process_exec; they are reported at sys_exit from the caller's argv,
 * which the kernel has already copied (and so faulted in) by then. */
#include "leakd.bpf.h"
#include "execsnoop.h"

const volatile __u32 targ_uid = (__u32)-1;
const volatile __u32 targ_ppid = 0;
const volatile __u8 failed_only = 0;

struct enter {
	const char *filename;
	const char *const *argv;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct enter);
} execs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct execsnoop_event);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

#define HDR_SIZE (sizeof(struct execsnoop_event) - EXECSNOOP_ARGS_MAX - EXECSNOOP_FILENAME_MAX)

static __always_inline int task_wanted(struct task_struct *task)
{
	if (targ_uid != (__u32)-1 && (__u32)bpf_get_current_uid_gid() != targ_uid)
		return 0;
	if (targ_ppid && BPF_CORE_READ(task, real_parent, tgid) != targ_ppid)
		return 0;
	return leakd_wanted();
}

static __always_inline struct execsnoop_event *fill_header(struct task_struct *task, __u32 tid, int ret)
{
	__u32 zero = 0;
	struct execsnoop_event *e = bpf_map_lookup_elem(&scratch, &zero);

	if (!e)
		return NULL;
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->tid = tid;
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->ret = ret;
	e->args_len = 0;
	e->args_total = 0;
	e->filename_len = 0;
	e->args_truncated = 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void submit(struct execsnoop_event *e)
{
	__u64 size = HDR_SIZE + (e->args_len & (EXECSNOOP_ARGS_MAX - 1)) +
		     (e->filename_len & (EXECSNOOP_FILENAME_MAX - 1));

	if (size > sizeof(*e))
		return;
	if (bpf_ringbuf_output(&events, e, size, leakd_rb_flags(&events, size)))
		leakd_count_lost(LEAKD_LOST_RINGBUF);
}

/* Append the filename after args; `user` says which address space it is in. */
static __always_inline void put_filename(struct execsnoop_event *e, const char *name, int user)
{
	__u64 off = e->args_len;
	long n;

	barrier_var(off);
	off &= EXECSNOOP_ARGS_MAX - 1;
	if (user)
		n = bpf_probe_read_user_str(&e->data[off], EXECSNOOP_FILENAME_MAX, name);
	else
		n = bpf_probe_read_kernel_str(&e->data[off], EXECSNOOP_FILENAME_MAX, name);
	/* n counts the NUL; keep it out of filename_len. */
	e->filename_len = n > 0 ? (n - 1) & (EXECSNOOP_FILENAME_MAX - 1) : 0;
}

static __always_inline int on_enter(const char *filename, const char *const *argv)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct enter en = { .filename = filename, .argv = argv };

	if (!task_wanted(task))
		return 0;
	if (bpf_map_update_elem(&execs, &tid, &en, BPF_ANY))
		leakd_count_lost(LEAKD_LOST_MAP_FULL);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int enter_execve(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter((const char *)ctx->args[0], (const char *const *)ctx->args[1]);
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int enter_execveat(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter((const char *)ctx->args[1], (const char *const *)ctx->args[2]);
}

/* Record an argv of `total` bytes, of which data[] keeps the first
 * EXECSNOOP_ARGS_MAX - 1 (the filename follows); returns the kept length.
 * The one rule for both the successful and the failed exec. */
static __always_inline __u64 clamp_args(struct execsnoop_event *e, __u64 total)
{
	e->args_total = total;
	if (total > EXECSNOOP_ARGS_MAX - 1) {
		e->args_truncated = 1;
		return EXECSNOOP_ARGS_MAX - 1;
	}
	return total;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tid = old_pid;
	struct execsnoop_event *e;
	struct mm_struct *mm;
	__u64 start, end, len;

	/* Only execs whose entry passed the filters have an entry. */
	if (!bpf_map_lookup_elem(&execs, &tid))
		return 0;
	bpf_map_delete_elem(&execs, &tid);
	if (failed_only)
		return 0;
	e = fill_header(p, tid, 0);
	if (!e)
		return 0;
	mm = BPF_CORE_READ(p, mm);
	start = BPF_CORE_READ(mm, arg_start);
	end = BPF_CORE_READ(mm, arg_end);
	len = clamp_args(e, end > start ? end - start : 0);
	if (len && bpf_probe_read_user(e->data, len, (void *)start) == 0)
		e->args_len = len;
	put_filename(e, BPF_CORE_READ(bprm, filename), 0);
	submit(e);
	return 0;
}

struct argv_walk {
	const char *const *argv;
	__u32 off;
	__u8 truncated;
};

/* bpf_loop callback: append argv[i] to the scratch event. Verified once,
 * whatever the number of iterations (an unrolled loop over hundreds of
 * arguments is more than the verifier will explore). */
static long read_arg(__u64 i, void *data)
{
	struct argv_walk *w = data;
	struct execsnoop_event *e;
	const char *arg = NULL;
	__u32 zero = 0;
	__u64 idx;
	long n;

	e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 1;
	if (bpf_probe_read_user(&arg, sizeof(arg), &w->argv[i]) || !arg)
		return 1;
	if (w->off >= EXECSNOOP_ARGS_MAX - 1) {
		w->truncated = 1;
		return 1;
	}
	idx = w->off;
	barrier_var(idx); /* keep clang from dropping the mask */
	idx &= EXECSNOOP_ARGS_MAX - 1;
	/* A constant size keeps the verifier's bound simple: data[] has
	 * EXECSNOOP_FILENAME_MAX spare bytes past EXECSNOOP_ARGS_MAX. */
	n = bpf_probe_read_user_str(&e->data[idx], EXECSNOOP_FILENAME_MAX, arg);
	if (n <= 0)
		return 1;
	if (n == EXECSNOOP_FILENAME_MAX)
		w->truncated = 1;
	w->off += n;
	return 0;
}

static __always_inline int on_exit(long ret)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct argv_walk w = {};
	struct execsnoop_event *e;
	struct enter *en;
	long n;

	en = bpf_map_lookup_elem(&execs, &tid);
	if (!en)
		return 0;
	/* A successful exec deleted its entry at sched_process_exec. */
	if (ret == 0) {
		bpf_map_delete_elem(&execs, &tid);
		return 0;
	}
	e = fill_header(task, tid, ret);
	if (!e)
		goto out;
	w.argv = en->argv;
	n = bpf_loop(EXECSNOOP_FAILED_ARGV_MAX, read_arg, &w, 0);
	e->args_truncated = w.truncated || n == EXECSNOOP_FAILED_ARGV_MAX;
	/* The last argument read may run past EXECSNOOP_ARGS_MAX - 1 (into the
	 * filename's room): cut there, since args_len is masked with
	 * EXECSNOOP_ARGS_MAX - 1 on use. */
	e->args_len = clamp_args(e, w.off);
	put_filename(e, en->filename, 1);
	submit(e);
out:
	bpf_map_delete_elem(&execs, &tid);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_execve")
int exit_execve(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_execveat")
int exit_execveat(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}
