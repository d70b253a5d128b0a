/* The DWARF unwinder's kernel/user-space contract: the compact unwind rows
 * user space compiles from each module's CFI (crates/unwind) and the maps
 * bpf/unwind.bpf.h walks user stacks with. The only definition; Rust
 * mirrors it with bindgen, so only fixed-size integer types here. */
#ifndef UNWIND_H
#define UNWIND_H

/* What a row says about the addresses from its pc to the next row's. */
enum unwind_kind {
	UNWIND_NONE = 0,        /* no CFI here: the frame-pointer walk applies */
	UNWIND_CFA_RSP = 1,     /* CFA = rsp + cfa_off */
	UNWIND_CFA_RBP = 2,     /* CFA = rbp + cfa_off */
	UNWIND_PLT = 3,         /* CFA = rsp + 8 + ((rip & 15) >= cfa_off ? 8 : 0) */
	UNWIND_END = 4,         /* outermost frame: the return address is undefined */
	UNWIND_UNSUPPORTED = 5, /* CFI the walker cannot evaluate (expressions) */
};

/* One row: the return address is always at CFA - 8 (rows where it is not
 * are UNWIND_UNSUPPORTED); rbp is restored from CFA + 8 * rbp_off, or left
 * as it is when rbp_off is 0. pc is a file offset (not a virtual address),
 * so one table serves every process mapping the file, wherever it is. */
struct unwind_row {
	__u32 pc;
	__u16 cfa_off;
	__u8 kind;    /* enum unwind_kind */
	__s8 rbp_off; /* in units of 8 bytes */
};

/* Modules are keyed by the identity of the mapped file, as the kernel and
 * /proc/PID/maps see it (so a file mapped by many processes, or mapped
 * again after dlopen, needs one table). */
struct unwind_module_key {
	__u64 ino;
	__u32 dev; /* kernel encoding: major << 20 | minor */
	__u32 pad;
};

/* A module's rows: [first, first + count) of the `unwind_rows` array,
 * sorted by pc. count 0: known to have no CFI (walk with frame pointers). */
struct unwind_module {
	__u32 first;
	__u32 count;
};

/* Most frames a walk returns. */
#define UNWIND_MAX_FRAMES 64
/* Rows of all modules together (the `unwind_rows` array's default size). */
#define UNWIND_DEFAULT_ROWS (4 << 20)
/* Iterations of the binary search: enough for 2^24 rows in one module. */
#define UNWIND_SEARCH_STEPS 24

/* Why a walk stopped, counted per CPU in `unwind_stops` (-v prints them). */
enum unwind_stop {
	UNWIND_STOP_END = 0,         /* the outermost frame (or rbp 0 in fp mode) */
	UNWIND_STOP_DEPTH = 1,       /* the frame limit */
	UNWIND_STOP_NO_ROW = 2,      /* dwarf mode, and no row for the pc */
	UNWIND_STOP_ANON = 3,        /* code outside any file mapping (JIT) */
	UNWIND_STOP_UNSUPPORTED = 4, /* a row the walker cannot evaluate, or a signal frame */
	UNWIND_STOP_READ = 5,        /* reading the stack faulted */
	UNWIND_STOP_NO_VMA = 6,      /* the pc is in no mapping */
	UNWIND_STOP_INTERRUPTED = 7, /* another walk took the CPU's scratch: given up */
	UNWIND_STOP_MAX = 8,
};

/* A module seen by the walker with no table loaded: user space builds one
 * (libraries dlopen'ed after attach). Sent through `unwind_new_modules`. */
struct unwind_new_module {
	struct unwind_module_key key;
	__u64 vm_start;
	__u64 vm_pgoff; /* file offset of vm_start */
	__u32 pid;
	__u32 pad;
};

#endif
