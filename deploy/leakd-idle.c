/*
 * leakd-idle: the main process of a leakd pod (the DaemonSet's, and the
 * short-lived pod of kubectl-leakd), in an image that has no shell.
 *
 *   leakd-idle          wait for SIGTERM/SIGINT, then exit 0. The tools run
 *                       beside it through `kubectl exec`, so their stdout
 *                       (JSON lines) and stderr (logs) stay apart, which
 *                       container logs would merge.
 *   leakd-idle --stop   send SIGINT to every other process of this container
 *                       (same cgroup as this one) except the idle process:
 *                       the tools print their final report and exit, as on
 *                       Ctrl-C. kubectl exec forwards no signal, and a
 *                       closed exec stream may leave the tool running.
 *
 * The pod runs with hostPID, so /proc lists the whole node: the cgroup
 * comparison keeps --stop inside its own container.
 */
#define _GNU_SOURCE
#include <dirent.h>
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

static int stop(void)
{
	char self[4096], cg[4096], path[64], comm[64];
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
		snprintf(path, sizeof path, "/proc/%ld/comm", pid);
		if (read_file(path, comm, sizeof comm) != 0 || strcmp(comm, "leakd-idle\n") == 0)
			continue;
		if (kill((pid_t)pid, SIGINT) == 0)
			sent++;
	}
	closedir(d);
	fprintf(stderr, "leakd-idle: sent SIGINT to %d process(es)\n", sent);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "--stop") == 0)
		return stop();
	if (argc != 1) {
		fprintf(stderr, "usage: leakd-idle [--stop]\n");
		return 2;
	}
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
