/*
 * leaker: a deterministic leak simulator for the leakd test-suite.
 *
 * The eBPF tools under test put uprobes on glibc's allocator entry points and
 * the tests compare their reports with what this program says it did, to the
 * byte.  Everything here serves that comparison:
 *
 *  - Every allocator call sits in its own small function (ALLOC_SITE) with a
 *    descriptive name, so the immediate caller seen by a uprobe on malloc & co.
 *    is stable in both builds (-O1 with frame pointers, -O2 without).  The
 *    "func" fields of the summary are those names.
 *  - The program makes no allocator calls of its own beyond the ones it
 *    counts: output is formatted with snprintf into a static buffer and sent
 *    with write(2), options are parsed with strtoull/strtod.  stdout is never
 *    written: a tracer that launches us prints its own JSON there.
 *  - stderr carries JSON lines only (leaker_ready, leaker_progress,
 *    leaker_summary, leaker_error, leaker_usage).
 *
 * glibc 2.36 details worth knowing when reading traces of this program:
 *  - realloc(NULL, n) calls malloc internally and realloc(p, 0) calls free
 *    internally; reallocarray calls realloc.  Those inner calls go to the same
 *    addresses as the public symbols, so a uprobe on malloc/free/realloc fires
 *    for them too.  The "calls" counts below are only what this program
 *    called, not what libc calls on its own.
 *  - aligned_alloc and memalign are aliases of one function (__libc_memalign),
 *    so a uprobe on either fires for both.
 *  - pthread_create allocates inside libc: the thread stack/descriptor with
 *    mmap, and the thread's DTV (TLS vector) with calloc from ld.so's
 *    _dl_allocate_tls.  glibc caches exited threads' stacks, DTV included, so
 *    those callocs stay outstanding after pthread_join.  They are libc's own
 *    and are not counted or reported here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <float.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h> /* snprintf/vsnprintf only: no stdio streams */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/*
 * An allocation site.  noipa keeps the function a real, separately named
 * function: no inlining, no .constprop/.isra clones (which would rename the
 * symbol) and no identical-code folding.  AFTER_CALL below keeps the allocator
 * call from becoming a tail jump, which would make the uprobe see our caller
 * instead of us.
 */
#if defined(__clang__)
#define ALLOC_SITE __attribute__((noinline, disable_tail_calls))
#else
#define ALLOC_SITE __attribute__((noipa))
#endif

#define NORETURN __attribute__((noreturn))
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))

#define MAX_THREADS 1024u
#define MIB (1024u * 1024u)

/* ------------------------------------------------------------------------ */
/* Call accounting                                                          */
/* ------------------------------------------------------------------------ */

enum api {
	API_MALLOC,
	API_CALLOC,
	API_REALLOC,
	API_REALLOCARRAY,
	API_POSIX_MEMALIGN,
	API_ALIGNED_ALLOC,
	API_MEMALIGN,
	API_VALLOC,
	API_PVALLOC,
	API_FREE,
	API_COUNT
};

static const char *const api_name[API_COUNT] = {
	[API_MALLOC] = "malloc",
	[API_CALLOC] = "calloc",
	[API_REALLOC] = "realloc",
	[API_REALLOCARRAY] = "reallocarray",
	[API_POSIX_MEMALIGN] = "posix_memalign",
	[API_ALIGNED_ALLOC] = "aligned_alloc",
	[API_MEMALIGN] = "memalign",
	[API_VALLOC] = "valloc",
	[API_PVALLOC] = "pvalloc",
	[API_FREE] = "free",
};

/* Bumped from worker threads too; pthread_join orders them before the read. */
static unsigned long calls[API_COUNT];

static inline void count_call(enum api api)
{
	__atomic_fetch_add(&calls[api], 1, __ATOMIC_RELAXED);
}

/*
 * Placed right after each allocator call.  The empty asm consumes the result,
 * so the call cannot be optimised away, and it is work left after the call,
 * so the call cannot be compiled to `jmp malloc` (a counter increment alone
 * is not enough: the compiler may hoist it above the call).
 */
#define AFTER_CALL(api, ptr)                                       \
	do {                                                       \
		__asm__ volatile("" : : "r"(ptr) : "memory");      \
		count_call(api);                                   \
	} while (0)

/* Same for free; the pointer is dead by then, so only a memory barrier. */
#define AFTER_FREE()                                               \
	do {                                                       \
		__asm__ volatile("" : : : "memory");               \
		count_call(API_FREE);                              \
	} while (0)

/* ------------------------------------------------------------------------ */
/* Leak bookkeeping for the summary                                         */
/* ------------------------------------------------------------------------ */

struct leak {
	enum api api;
	const char *func;     /* the ALLOC_SITE that called the allocator */
	unsigned long count;  /* blocks */
	size_t size;          /* bytes per block, as passed to the allocator */
	size_t align;         /* 0: the API takes no alignment argument */
	long tid;             /* 0: not reported (single-threaded scenarios) */
};

static struct leak leaks[MAX_THREADS + 16];
static size_t n_leaks;

static void note_leak(enum api api, const char *func, unsigned long count,
		      size_t size, size_t align, long tid)
{
	if (count == 0)
		return;
	leaks[n_leaks++] = (struct leak){ api, func, count, size, align, tid };
}

/*
 * Records a leak whose site is `fn`; naming the function itself (rather than
 * a string) makes a typo a compile error instead of a wrong "func" field.
 */
#define LEAKED(api, fn, size, align) \
	((void)(fn), note_leak((api), #fn, 1, (size), (align), 0))

/* ------------------------------------------------------------------------ */
/* Output: JSON lines on fd 2, built without touching the heap              */
/* ------------------------------------------------------------------------ */

/*
 * One static line buffer.  Only the main thread writes output (workers report
 * through their struct worker), so no locking is needed.  Sized for the
 * largest summary: MAX_THREADS entries of ~130 bytes plus the header.
 */
static char line[256 * 1024];
static size_t line_len;

static NORETURN void overflow(void)
{
	static const char msg[] =
		"{\"type\":\"leaker_error\",\"message\":\"output line overflow\"}\n";
	(void)!write(2, msg, sizeof msg - 1);
	_exit(1);
}

static PRINTF_LIKE(1, 2) void put(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line + line_len, sizeof line - line_len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof line - line_len)
		overflow();
	line_len += (size_t)n;
}

/*
 * Appends s as a JSON string.  Only error messages carry user input, so long
 * input is cut at 256 bytes and non-ASCII bytes become '?' rather than risk
 * emitting invalid UTF-8.
 */
static void put_str(const char *s)
{
	put("\"");
	for (size_t i = 0; s[i] != '\0' && i < 256; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\')
			put("\\%c", c);
		else if (c < 0x20)
			put("\\u%04x", c);
		else
			put("%c", c >= 0x7f ? '?' : c);
	}
	put("\"");
}

static void emit(void)
{
	put("\n");
	for (size_t off = 0; off < line_len;) {
		ssize_t n = write(2, line + off, line_len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break; /* stderr is gone; nobody is left to tell */
		off += (size_t)n;
	}
	line_len = 0;
}

static const char usage_text[] =
	"leaker SCENARIO [options]; SCENARIO: ten-nine | steady | none | mixed | threads; "
	"options: --sleep SECS, --wait-signal, --linger SECS|inf, --count K, --size BYTES, "
	"--threads N, --interval SECS, --max BYTES, --exec SCENARIO";

/* Exit status 2 means bad usage, 1 a runtime failure. */
static PRINTF_LIKE(2, 3) NORETURN void fail(int status, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	line_len = 0;
	put("{\"type\":\"leaker_error\",\"message\":");
	put_str(msg);
	if (status == 2) {
		put(",\"usage\":");
		put_str(usage_text);
	}
	put("}");
	emit();
	exit(status);
}

/* ------------------------------------------------------------------------ */
/* Time                                                                     */
/* ------------------------------------------------------------------------ */

static struct timespec now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts;
}

static uint64_t ts_ns(struct timespec ts)
{
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* secs is validated by parse_secs: finite, 0 <= secs <= 1e9. */
static struct timespec ts_add(struct timespec ts, double secs)
{
	time_t whole = (time_t)secs;
	ts.tv_sec += whole;
	ts.tv_nsec += (long)((secs - (double)whole) * 1e9);
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	return ts;
}

/* Absolute deadlines: no drift across intervals, and EINTR-safe. */
static void sleep_until(struct timespec deadline)
{
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL) == EINTR)
		;
}

static void sleep_for(double secs)
{
	if (secs > 0)
		sleep_until(ts_add(now(), secs));
}

static NORETURN void sleep_forever(void)
{
	for (;;)
		pause();
}

/* ------------------------------------------------------------------------ */
/* Options                                                                  */
/* ------------------------------------------------------------------------ */

static struct {
	const char *scenario;
	double sleep_s;
	bool wait_signal;
	double linger_s;
	bool linger_set, linger_forever;
	unsigned long count;
	size_t size;
	bool size_set;
	unsigned threads;
	double interval_s;
	size_t max;
	const char *exec_scenario; /* --exec: then become a leaker running this */
} opt = {
	.count = 10,
	.threads = 4,
	.interval_s = 5.0,
	.max = (size_t)1000 * MIB,
};

static unsigned long long parse_uint(const char *name, const char *s,
				     unsigned long long min, unsigned long long max)
{
	char *end;
	/* strtoull silently accepts "-1" and leading blanks; reject both. */
	if (s[0] < '0' || s[0] > '9')
		fail(2, "%s: expected an unsigned integer, got '%s'", name, s);
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		fail(2, "%s: expected an integer in [%llu, %llu], got '%s'", name, min, max, s);
	return v;
}

/* Returns true for "inf"/"infinity" (only where allow_forever). */
static bool parse_secs(const char *name, const char *s, double *out, bool allow_forever)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || *end != '\0' || errno != 0)
		fail(2, "%s: expected a number of seconds, got '%s'", name, s);
	if (allow_forever && v > DBL_MAX)
		return true;
	/* !(v >= 0) also rejects NaN. */
	if (!(v >= 0) || v > 1e9)
		fail(2, "%s: expected seconds in [0, 1e9]%s, got '%s'", name,
		     allow_forever ? " or inf" : "", s);
	*out = v;
	return false;
}

static void parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i];
		if (arg[0] != '-') {
			if (opt.scenario != NULL)
				fail(2, "unexpected argument '%s' (scenario is already '%s')",
				     arg, opt.scenario);
			opt.scenario = arg;
			continue;
		}
		if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
			put("{\"type\":\"leaker_usage\",\"usage\":");
			put_str(usage_text);
			put("}");
			emit();
			exit(0);
		}
		if (strcmp(arg, "--wait-signal") == 0) {
			opt.wait_signal = true;
			continue;
		}

		/* Every other option takes a value: "--opt VALUE" or "--opt=VALUE". */
		char name[32];
		const char *val;
		const char *eq = strchr(arg, '=');
		if (eq != NULL) {
			size_t len = (size_t)(eq - arg);
			if (len >= sizeof name)
				fail(2, "unknown option '%s'", arg);
			memcpy(name, arg, len);
			name[len] = '\0';
			val = eq + 1;
		} else {
			if (strlen(arg) >= sizeof name)
				fail(2, "unknown option '%s'", arg);
			strcpy(name, arg);
			val = NULL;
		}

		static const char *const valued[] = {
			"--sleep", "--linger", "--count", "--size", "--threads", "--interval", "--max",
			"--exec",
		};
		bool known = false;
		for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++)
			known = known || strcmp(name, valued[k]) == 0;
		if (!known)
			fail(2, "unknown option '%s'", arg);
		if (val == NULL) {
			if (i + 1 >= argc)
				fail(2, "option '%s' needs a value", name);
			val = argv[++i];
		}

		if (strcmp(name, "--sleep") == 0) {
			parse_secs(name, val, &opt.sleep_s, false);
		} else if (strcmp(name, "--linger") == 0) {
			opt.linger_set = true;
			opt.linger_forever = parse_secs(name, val, &opt.linger_s, true);
		} else if (strcmp(name, "--interval") == 0) {
			parse_secs(name, val, &opt.interval_s, false);
		} else if (strcmp(name, "--count") == 0) {
			opt.count = (unsigned long)parse_uint(name, val, 0, UINT32_MAX);
		} else if (strcmp(name, "--size") == 0) {
			/* Cap keeps every byte total far from overflowing. */
			opt.size = (size_t)parse_uint(name, val, 1, (size_t)1 << 40);
			opt.size_set = true;
		} else if (strcmp(name, "--threads") == 0) {
			opt.threads = (unsigned)parse_uint(name, val, 1, MAX_THREADS);
		} else if (strcmp(name, "--exec") == 0) {
			opt.exec_scenario = val;
		} else { /* --max */
			opt.max = (size_t)parse_uint(name, val, 0, (size_t)1 << 50);
		}
	}
	if (opt.scenario == NULL)
		fail(2, "missing scenario");
}

/* ------------------------------------------------------------------------ */
/* Scenario: ten-nine                                                       */
/* ------------------------------------------------------------------------ */

static ALLOC_SITE void *leak_ten_nine_alloc(size_t size)
{
	void *p = malloc(size);
	AFTER_CALL(API_MALLOC, p);
	return p;
}

static ALLOC_SITE void ten_nine_free(void *p)
{
	free(p);
	AFTER_FREE();
}

static void run_ten_nine(void)
{
	void *blocks[10];
	/* All ten are live at once, so the tracer sees ten distinct addresses. */
	for (size_t i = 0; i < 10; i++) {
		blocks[i] = leak_ten_nine_alloc(8);
		if (blocks[i] == NULL)
			fail(1, "malloc(8) failed");
	}
	for (size_t i = 0; i < 9; i++)
		ten_nine_free(blocks[i]);
	note_leak(API_MALLOC, "leak_ten_nine_alloc", 1, 8, 0, 0);
}

/* ------------------------------------------------------------------------ */
/* Scenario: steady                                                         */
/* ------------------------------------------------------------------------ */

static ALLOC_SITE void *steady_leak(size_t size)
{
	void *p = malloc(size);
	AFTER_CALL(API_MALLOC, p);
	/* Touch every page so RSS grows with the leak.  A non-zero fill keeps
	 * any compiler from fusing malloc+memset(0) into calloc. */
	if (p != NULL)
		memset(p, 0xa5, size);
	return p;
}

static void run_steady(void)
{
	size_t size = opt.size_set ? opt.size : MIB;
	unsigned long n = 0;
	size_t leaked = 0;
	struct timespec next = now();

	/* Never exceed --max; written this way round so it cannot overflow. */
	while (opt.max - leaked >= size) {
		if (n > 0) {
			next = ts_add(next, opt.interval_s);
			sleep_until(next);
		}
		if (steady_leak(size) == NULL)
			fail(1, "malloc(%zu) failed after %zu bytes leaked", size, leaked);
		n++;
		leaked += size;
		put("{\"type\":\"leaker_progress\",\"leaked_bytes\":%zu,\"leaked_count\":%lu,"
		    "\"ts_ns\":%llu}",
		    leaked, n, (unsigned long long)ts_ns(now()));
		emit();
	}
	note_leak(API_MALLOC, "steady_leak", n, size, 0, 0);
}

/* ------------------------------------------------------------------------ */
/* Scenario: mixed                                                          */
/* ------------------------------------------------------------------------ */

/*
 * One site per leak, so that even a tool that only resolves the innermost
 * frame (the -fomit-frame-pointer build) sees each leak at its own function.
 * Each site is also called once more with a different size for a block that
 * run_mixed frees, to check that frees are matched.
 */

static ALLOC_SITE void *mixed_malloc(size_t size)
{
	void *p = malloc(size);
	AFTER_CALL(API_MALLOC, p);
	return p;
}

static ALLOC_SITE void *mixed_calloc(size_t nmemb, size_t size)
{
	void *p = calloc(nmemb, size);
	AFTER_CALL(API_CALLOC, p);
	return p;
}

/* malloc(from) then realloc to a larger `to`; the result is a `to` block. */
static ALLOC_SITE void *mixed_realloc_grow(size_t from, size_t to)
{
	void *p = malloc(from);
	AFTER_CALL(API_MALLOC, p);
	if (p == NULL)
		return NULL;
	void *q = realloc(p, to);
	AFTER_CALL(API_REALLOC, q);
	return q;
}

/* Same, shrinking: glibc usually shrinks in place, keeping the address. */
static ALLOC_SITE void *mixed_realloc_shrink(size_t from, size_t to)
{
	void *p = malloc(from);
	AFTER_CALL(API_MALLOC, p);
	if (p == NULL)
		return NULL;
	void *q = realloc(p, to);
	AFTER_CALL(API_REALLOC, q);
	return q;
}

/* realloc(NULL, n) is malloc(n); glibc implements it by calling malloc. */
static ALLOC_SITE void *mixed_realloc_null(size_t size)
{
	void *p = realloc(NULL, size);
	AFTER_CALL(API_REALLOC, p);
	return p;
}

/*
 * realloc(p, 0) frees p in glibc and returns NULL (no leak, no free call from
 * us).  Returns whatever realloc returned so the caller can cope with a libc
 * that hands back a minimal block instead.
 */
static ALLOC_SITE void *mixed_realloc_zero(size_t size)
{
	void *p = malloc(size);
	AFTER_CALL(API_MALLOC, p);
	if (p == NULL)
		return NULL;
	void *q = realloc(p, 0);
	AFTER_CALL(API_REALLOC, q);
	return q;
}

/* malloc(from) then reallocarray to nmemb*size bytes. */
static ALLOC_SITE void *mixed_reallocarray(size_t from, size_t nmemb, size_t size)
{
	void *p = malloc(from);
	AFTER_CALL(API_MALLOC, p);
	if (p == NULL)
		return NULL;
	void *q = reallocarray(p, nmemb, size);
	AFTER_CALL(API_REALLOCARRAY, q);
	return q;
}

static ALLOC_SITE void *mixed_posix_memalign(size_t align, size_t size)
{
	void *p = NULL;
	int rc = posix_memalign(&p, align, size);
	AFTER_CALL(API_POSIX_MEMALIGN, p);
	return rc == 0 ? p : NULL;
}

static ALLOC_SITE void *mixed_aligned_alloc(size_t align, size_t size)
{
	void *p = aligned_alloc(align, size);
	AFTER_CALL(API_ALIGNED_ALLOC, p);
	return p;
}

static ALLOC_SITE void *mixed_memalign(size_t align, size_t size)
{
	void *p = memalign(align, size);
	AFTER_CALL(API_MEMALIGN, p);
	return p;
}

static ALLOC_SITE void *mixed_valloc(size_t size)
{
	void *p = valloc(size);
	AFTER_CALL(API_VALLOC, p);
	return p;
}

static ALLOC_SITE void *mixed_pvalloc(size_t size)
{
	void *p = pvalloc(size);
	AFTER_CALL(API_PVALLOC, p);
	return p;
}

static ALLOC_SITE void mixed_free(void *p)
{
	free(p);
	AFTER_FREE();
}

static void *must(void *p, const char *what)
{
	if (p == NULL)
		fail(1, "%s failed", what);
	return p;
}

/* Every API once, each from its own site (so a tool that wrongly reports a
 * leak also says which API confused it), every block freed: the matched
 * half of mixed, and all of none. */
static void free_one_of_each(void)
{
	mixed_free(must(mixed_malloc(1001), "malloc"));
	mixed_free(must(mixed_calloc(1, 1002), "calloc"));
	mixed_free(must(mixed_realloc_grow(1003, 1004), "realloc grow"));
	mixed_free(must(mixed_realloc_shrink(1006, 1005), "realloc shrink"));
	mixed_free(must(mixed_realloc_null(1007), "realloc(NULL)"));
	mixed_free(must(mixed_reallocarray(1008, 3, 337), "reallocarray")); /* 1011 */
	mixed_free(must(mixed_posix_memalign(64, 1012), "posix_memalign"));
	/* C11 wants the size to be a multiple of the alignment: 9 * 128. */
	mixed_free(must(mixed_aligned_alloc(128, 1152), "aligned_alloc"));
	mixed_free(must(mixed_memalign(256, 1013), "memalign"));
	mixed_free(must(mixed_valloc(1014), "valloc"));
	mixed_free(must(mixed_pvalloc(1015), "pvalloc"));
	void *z = mixed_realloc_zero(1016);
	if (z != NULL) /* not glibc: realloc(p, 0) returned a block */
		mixed_free(z);
}

static void run_mixed(void)
{
	/* Leaks: every size distinct, across this list and the freed one. */
	must(mixed_malloc(40), "malloc");
	LEAKED(API_MALLOC, mixed_malloc, 40, 0);
	must(mixed_calloc(3, 100), "calloc");
	LEAKED(API_CALLOC, mixed_calloc, 300, 0);
	must(mixed_realloc_grow(64, 200), "realloc grow");
	LEAKED(API_REALLOC, mixed_realloc_grow, 200, 0);
	must(mixed_realloc_shrink(500, 50), "realloc shrink");
	LEAKED(API_REALLOC, mixed_realloc_shrink, 50, 0);
	must(mixed_realloc_null(72), "realloc(NULL)");
	LEAKED(API_REALLOC, mixed_realloc_null, 72, 0);
	must(mixed_reallocarray(16, 7, 24), "reallocarray");
	LEAKED(API_REALLOCARRAY, mixed_reallocarray, 168, 0);
	must(mixed_posix_memalign(64, 640), "posix_memalign");
	LEAKED(API_POSIX_MEMALIGN, mixed_posix_memalign, 640, 64);
	must(mixed_aligned_alloc(128, 1280), "aligned_alloc");
	LEAKED(API_ALIGNED_ALLOC, mixed_aligned_alloc, 1280, 128);
	must(mixed_memalign(256, 2560), "memalign");
	LEAKED(API_MEMALIGN, mixed_memalign, 2560, 256);
	must(mixed_valloc(4000), "valloc");
	LEAKED(API_VALLOC, mixed_valloc, 4000, 0);
	/* pvalloc rounds the block up to a whole page (8192 bytes here) inside
	 * glibc; the leak is reported at the requested size, like the rest. */
	must(mixed_pvalloc(5000), "pvalloc");
	LEAKED(API_PVALLOC, mixed_pvalloc, 5000, 0);

	/* Matched: the same sites again, other sizes, all freed. */
	free_one_of_each();
}

/* ------------------------------------------------------------------------ */
/* Scenario: none                                                           */
/* ------------------------------------------------------------------------ */

static void run_none(void)
{
	free_one_of_each();
}

/* ------------------------------------------------------------------------ */
/* Scenario: threads                                                        */
/* ------------------------------------------------------------------------ */

struct worker {
	pthread_t thread;
	long tid;
	unsigned long leaked;
	bool failed;
};

static struct worker workers[MAX_THREADS];
static pthread_barrier_t start_line;

static ALLOC_SITE void *thread_leak(size_t size)
{
	void *p = malloc(size);
	AFTER_CALL(API_MALLOC, p);
	return p;
}

/* A same-sized block that is freed at once. */
static ALLOC_SITE bool thread_churn(size_t size)
{
	void *p = malloc(size);
	AFTER_CALL(API_MALLOC, p);
	if (p == NULL)
		return false;
	free(p);
	AFTER_FREE();
	return true;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	size_t size = opt.size_set ? opt.size : 32;

	w->tid = (long)gettid();
	/* Start together so the threads really allocate concurrently. */
	pthread_barrier_wait(&start_line);
	for (unsigned long i = 0; i < opt.count; i++) {
		/* Churn first: glibc's tcache hands the block just freed to the
		 * next malloc, so every leaked block reuses a freed address, and a
		 * tracer that mismatches frees and allocations shows it. */
		if (!thread_churn(size) || thread_leak(size) == NULL) {
			w->failed = true;
			break;
		}
		w->leaked++;
	}
	return NULL;
}

static void run_threads(void)
{
	size_t size = opt.size_set ? opt.size : 32;

	if (pthread_barrier_init(&start_line, NULL, opt.threads) != 0)
		fail(1, "pthread_barrier_init failed");
	/* pthread_create allocates in libc (stack via mmap, DTV via calloc from
	 * ld.so); those calls are libc's, not ours, and are not counted. */
	for (unsigned i = 0; i < opt.threads; i++) {
		int rc = pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
		if (rc != 0)
			fail(1, "pthread_create failed: %s", strerror(rc));
	}
	for (unsigned i = 0; i < opt.threads; i++)
		pthread_join(workers[i].thread, NULL);
	pthread_barrier_destroy(&start_line);

	for (unsigned i = 0; i < opt.threads; i++) {
		if (workers[i].failed)
			fail(1, "malloc(%zu) failed in thread %ld", size, workers[i].tid);
		note_leak(API_MALLOC, "thread_leak", workers[i].leaked, size, 0, workers[i].tid);
	}
}

/* ------------------------------------------------------------------------ */
/* Main                                                                     */
/* ------------------------------------------------------------------------ */

static const struct {
	const char *name;
	void (*run)(void);
} scenarios[] = {
	{ "ten-nine", run_ten_nine },
	{ "steady", run_steady },
	{ "none", run_none },
	{ "mixed", run_mixed },
	{ "threads", run_threads },
};

static void emit_summary(void)
{
	unsigned long total_count = 0;
	size_t total_bytes = 0;

	put("{\"type\":\"leaker_summary\",\"scenario\":");
	put_str(opt.scenario);
	put(",\"leaks\":[");
	for (size_t i = 0; i < n_leaks; i++) {
		const struct leak *l = &leaks[i];
		put("%s{\"api\":\"%s\",\"func\":\"%s\"", i ? "," : "", api_name[l->api], l->func);
		if (l->tid != 0)
			put(",\"tid\":%ld", l->tid);
		put(",\"count\":%lu,\"size_bytes\":%zu", l->count, l->size);
		if (l->align != 0)
			put(",\"align\":%zu", l->align);
		put("}");
		total_count += l->count;
		total_bytes += l->count * l->size;
	}
	put("],\"leaked_count\":%lu,\"leaked_bytes\":%zu,\"calls\":{", total_count, total_bytes);
	for (int a = 0; a < API_COUNT; a++)
		put("%s\"%s\":%lu", a ? "," : "", api_name[a],
		    __atomic_load_n(&calls[a], __ATOMIC_RELAXED));
	put("}}");
	emit();
}

int main(int argc, char **argv)
{
	/*
	 * Block SIGUSR1 before anything else (threads inherit the mask), so a
	 * SIGUSR1 sent as soon as the ready line appears, or even before
	 * sigwait starts, stays pending instead of killing us.  A signal sent
	 * before main runs (during exec/ld.so) still kills us: signal only after
	 * the ready line, or spawn us with SIGUSR1 already blocked (the mask is
	 * inherited across exec and sigwait then picks the signal up).
	 */
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, NULL);

	parse_args(argc, argv);

	void (*run)(void) = NULL;
	for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++)
		if (strcmp(opt.scenario, scenarios[i].name) == 0)
			run = scenarios[i].run;
	if (run == NULL)
		fail(2, "unknown scenario '%s'", opt.scenario);
	/* steady's point is the plateau after --max, so it stays up by default. */
	if (!opt.linger_set && run == run_steady)
		opt.linger_forever = true;

	put("{\"type\":\"leaker_ready\",\"pid\":%ld,\"scenario\":", (long)getpid());
	put_str(opt.scenario);
	put("}");
	emit();

	if (opt.wait_signal) {
		int sig;
		while (sigwait(&usr1, &sig) != 0)
			;
	}
	sleep_for(opt.sleep_s);

	run();
	emit_summary();

	if (opt.linger_forever)
		sleep_forever();
	sleep_for(opt.linger_s);
	if (opt.exec_scenario != NULL) {
		/* The blocks leaked so far end with this image: what a tracer
		 * must then report is the new image's. */
		execl("/proc/self/exe", "leaker", opt.exec_scenario, (char *)NULL);
		fail(1, "exec /proc/self/exe: %s", strerror(errno));
	}
	return 0;
}
