/*
 * proc: start, watch and stop a program for a test (millrace-api,
 * millrace-worker, tests/fake_worker, ...).
 *
 * A started program writes its stdout and stderr to a log file of the test's
 * choosing and dies with the test (PR_SET_PDEATHSIG = SIGKILL), so a test
 * that fails half-way leaves nothing running. Key decision: PR_SET_PDEATHSIG
 * fires when the THREAD that forked the child ends, not the process, so start
 * programs from the main thread (cmocka runs tests there). Every wait is
 * bounded by a timeout in milliseconds; a negative timeout waits for ever.
 *
 * Not thread-safe: use a struct proc from one thread.
 */
#pragma once

#include <sys/types.h>

struct proc {
    pid_t pid;  /* > 0 while started and not yet reaped; 0 otherwise */
    int status; /* the wait status once reaped (waitpid's), else 0 */
};

/*
 * Start argv[0] (looked up in PATH when it has no '/') with arguments argv
 * (NULL-terminated; borrowed). The environment is this process's plus
 * extra_env (NULL, or a NULL-terminated list of "NAME=value", borrowed; a name
 * given there replaces the inherited one). stdout and stderr go to log_path,
 * opened for appending and created if missing (NULL: inherit ours). Every
 * signal starts with its default action and unblocked.
 * Returns 0 with p->pid set, or -1 (a message on stderr) when the log cannot
 * be opened, fork fails or the program cannot be executed.
 * Call from the main thread (see the file comment).
 */
int proc_start(struct proc *p, char *const argv[], char *const extra_env[], const char *log_path);

/* Send sig to the program. Returns 0, or -1 when it is not running. */
int proc_signal(struct proc *p, int sig);

/*
 * Wait up to timeout_ms (< 0: for ever) for the program to end and reap it.
 * Returns 0 with the wait status in *status (may be NULL; also kept in
 * p->status), or -1 on timeout (it is still running). A program that was
 * already reaped returns 0 at once with its status.
 */
int proc_wait(struct proc *p, long timeout_ms, int *status);

/*
 * Send sig, wait up to timeout_ms for the program to end, then SIGKILL it and
 * reap it. Returns the wait status when it ended within timeout_ms (0 means
 * it exited with status 0; use WIFEXITED and friends for the rest), or -1
 * when it had to be killed. A program already reaped returns its status.
 */
int proc_stop(struct proc *p, int sig, long timeout_ms);

/* 1 while the program runs; 0 once it has ended (it is then reaped). */
int proc_alive(struct proc *p);

/* Wait up to timeout_ms until a TCP connection to 127.0.0.1:port succeeds.
 * Returns 0, or -1 on timeout. */
int proc_wait_port(int port, long timeout_ms);

/* A TCP port on the loopback interface that was free a moment ago (bind port
 * 0, read it back, close). Returns it, or -1. Thread-safe. */
int proc_free_port(void);
