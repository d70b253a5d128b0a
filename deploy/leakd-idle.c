/*
 * leakd-idle: the main process of a leakd pod (the DaemonSet's, and the
 * short-lived pod of kubectl-leakd), in an image that has no shell.
 *
 *   leakd-idle          wait for SIGTERM/SIGINT, then exit 0. The tools run
 *                       beside it through `kubectl exec`, so their stdout
 *                       (JSON lines) and stderr (logs) stay apart, which
 *                       container logs would merge.
 *   leakd-idle --session TOKEN -- TOOL [ARGS...]
 *                       run TOOL (exec, same pid) with LEAKD_SESSION=TOKEN
 *                       in its environment: the mark of one kubectl-leakd
 *                       session. The image has no shell nor env(1) to set it.
 *   leakd-idle --stop TOKEN
 *                       send SIGINT to the processes of this container (same
 *                       cgroup as this one) whose environment holds
 *                       LEAKD_SESSION=TOKEN: that session's tool prints its
 *                       final report and exits, as on Ctrl-C. kubectl exec
 *                       forwards no signal, and a closed exec stream may
 *                       leave the tool running. The DaemonSet's pods are
 *                       shared by every user of --all-nodes: one session's
 *                       Ctrl-C must not stop the others' tools, so there is
 *                       no "stop them all".
 *
 * The pod runs with hostPID, so /proc lists the whole node: the cgroup
 * comparison keeps --stop inside its own container.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return 0;
}

/* Whether a session token is one kubectl-leakd makes (and so safe to
 * compare and to print): 1-64 of [A-Za-z0-9_-]. */
static int valid_token(const char *t)
{
	size_t n = strlen(t);
	if (n == 0 || n > 64)
		return 0;
	return strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == n;
}

/* Whether /proc/PID/environ (NUL-separated, any size) holds `want`. */
static int environ_has(long pid, const char *want)
{
	char path[64], buf[8192];
	size_t wlen = strlen(want), have = 0;
	int found = 0, skip = 0;
	snprintf(path, sizeof path, "/proc/%ld/environ", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	/* `have` bytes of the current entry are in buf; an entry longer than
	 * buf cannot be `want` (at most ~80 bytes) and is skipped. */
	for (;;) {
		ssize_t n = read(fd, buf + have, sizeof buf - have);
		if (n <= 0)
			break;
		size_t end = have + (size_t)n, start = 0;
		for (size_t i = 0; i < end; i++) {
			if (buf[i] != '\0')
				continue;
			if (!skip && i - start == wlen && memcmp(buf + start, want, wlen) == 0)
				found = 1;
			skip = 0;
			start = i + 1;
		}
		if (found)
			break;
		have = end - start;
		if (have == sizeof buf) {
			skip = 1;
			have = 0;
		} else {
			memmove(buf, buf + start, have);
		}
	}
	close(fd);
	return found;
}

static int stop(const char *token)
{
	char self[4096], cg[4096], path[64], want[96];
	snprintf(want, sizeof want, "LEAKD_SESSION=%s", token);
	if (read_file("/proc/self/cgroup", self, sizeof self) != 0) {
		perror("leakd-idle: error: reading /proc/self/cgroup");
		return 1;
	}
	DIR *d = opendir("/proc");
	if (d == NULL) {
		perror("leakd-idle: error: opening /proc");
		return 1;
	}
	pid_t me = getpid();
	int sent = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		char *end;
		long pid = strtol(e->d_name, &end, 10);
		if (*end != '\0' || pid <= 0 || pid == me)
			continue;
		snprintf(path, sizeof path, "/proc/%ld/cgroup", pid);
		if (read_file(path, cg, sizeof cg) != 0 || strcmp(cg, self) != 0)
			continue;
		if (!environ_has(pid, want))
			continue;
		if (kill((pid_t)pid, SIGINT) == 0)
			sent++;
	}
	closedir(d);
	fprintf(stderr, "leakd-idle: sent SIGINT to %d process(es) of session %s\n", sent, token);
	return 0;
}

static int usage(void)
{
	fprintf(stderr, "usage: leakd-idle | leakd-idle --session TOKEN -- TOOL [ARGS...] | "
			"leakd-idle --stop TOKEN\n");
	return 2;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "--stop") == 0) {
		if (argc != 3 || !valid_token(argv[2]))
			return usage();
		return stop(argv[2]);
	}
	if (argc >= 2 && strcmp(argv[1], "--session") == 0) {
		if (argc < 5 || !valid_token(argv[2]) || strcmp(argv[3], "--") != 0)
			return usage();
		if (setenv("LEAKD_SESSION", argv[2], 1) != 0) {
			perror("leakd-idle: error: setenv");
			return 1;
		}
		execvp(argv[4], argv + 4);
		fprintf(stderr, "leakd-idle: error: running %s: %s\n", argv[4], strerror(errno));
		return 127;
	}
	if (argc != 1)
		return usage();
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sig;
	while (sigwait(&set, &sig) != 0)
		;
	return 0;
}
