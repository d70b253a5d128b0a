/* Definitions shared by every leakd BPF object and by user space (through
 * bindgen). Only plain integer types: this header is included both after
 * vmlinux.h (BPF side) and after <linux/types.h> (bindgen side). */
#ifndef LEAKD_H
#define LEAKD_H

/* Slots of the per-CPU `leakd_lost` array: why an event did not reach user
 * space. User space sums them over CPUs and prints {"type":"lost",...}. */
enum leakd_lost_reason {
	LEAKD_LOST_RINGBUF = 0,   /* ring buffer full */
	LEAKD_LOST_STACK = 1,     /* stack id could not be stored */
	LEAKD_LOST_UNMATCHED = 2, /* return probe without its entry */
	LEAKD_LOST_MAP_FULL = 3,  /* a tracking map was full */
	LEAKD_LOST_MAX = 4,
};

#endif
