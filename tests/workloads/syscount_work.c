/* syscount test workload: exact numbers of cheap, distinctive syscalls that
 * the C runtime never makes on its own (getppid; close(-1), which fails with
 * EBADF), so a tracer's counts can be checked for equality.
 *
 * usage: syscount_work N_GETPPID N_EBADF [N_CHILD_GETPPID [PIDFILE|- [wait]]]
 * A child, if asked for, makes its getppid calls before the parent makes
 * its own. PIDFILE receives "PARENT_PID CHILD_PID". With "wait", nothing
 * happens until a byte arrives on stdin (so a tracer can attach by pid). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 0;
	long k = argc > 2 ? atol(argv[2]) : 0;
	long c = argc > 3 ? atol(argv[3]) : 0;
	const char *pidfile = argc > 4 && strcmp(argv[4], "-") ? argv[4] : NULL;
	pid_t child = 0;
	char ch;

	if (argc > 5 && !strcmp(argv[5], "wait") && read(0, &ch, 1) != 1)
		return 1;
	if (c > 0) {
		child = fork();
		if (child < 0)
			return 1;
		if (child == 0) {
			for (long i = 0; i < c; i++)
				syscall(SYS_getppid);
			_exit(0);
		}
		waitpid(child, NULL, 0);
	}
	for (long i = 0; i < n; i++)
		syscall(SYS_getppid);
	for (long i = 0; i < k; i++)
		syscall(SYS_close, -1);
	if (pidfile) {
		FILE *f = fopen(pidfile, "w");
		if (!f)
			return 1;
		fprintf(f, "%d %d\n", (int)getpid(), (int)child);
		fclose(f);
	}
	return 0;
}
