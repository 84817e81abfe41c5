/*
 * proc: start, watch and stop a program for a test (see proc.h).
 *
 * Key decision: everything that allocates (the environment, the log file) is
 * prepared before fork, so the child only calls async-signal-safe functions
 * before exec, which is what POSIX allows after fork in a process that may
 * have threads. An exec failure comes back to the parent through a
 * close-on-exec pipe, so proc_start reports a missing program as an error
 * instead of a child that exits 127 later.
 */
#include "tests/support/proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"

extern char **environ;

/* Length of the name in "NAME=value" (the whole string when there is no '='). */
static size_t env_name_len(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq ? (size_t)(eq - kv) : strlen(kv);
}

/* A new array (free() it; the strings are borrowed): environ minus the names
 * that extra sets, then extra. NULL on allocation failure. */
static char **build_env(char *const extra[])
{
    size_t n_env = 0, n_extra = 0;
    while (environ && environ[n_env])
        n_env++;
    while (extra && extra[n_extra])
        n_extra++;
    char **env = calloc(n_env + n_extra + 1, sizeof(*env));
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n_env; i++) {
        size_t len = env_name_len(environ[i]);
        int replaced = 0;
        for (size_t j = 0; j < n_extra && !replaced; j++)
            replaced = env_name_len(extra[j]) == len && strncmp(extra[j], environ[i], len) == 0;
        if (!replaced)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < n_extra; j++)
        env[k++] = extra[j];
    env[k] = NULL;
    return env;
}

int proc_start(struct proc *p, char *const argv[], char *const extra_env[], const char *log_path)
{
    int rc = -1, log_fd = -1, pipe_fd[2] = {-1, -1};
    char **env = NULL;
    p->pid = 0;
    p->status = 0;

    if (log_path) {
        log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (log_fd < 0) {
            fprintf(stderr, "proc: cannot open %s: %s\n", log_path, strerror(errno));
            goto out;
        }
    }
    env = build_env(extra_env);
    if (!env || pipe2(pipe_fd, O_CLOEXEC) < 0) {
        fprintf(stderr, "proc: cannot start %s: %s\n", argv[0], strerror(errno));
        goto out;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "proc: fork: %s\n", strerror(errno));
        goto out;
    }
    if (pid == 0) {
        /* child: async-signal-safe calls only */
        int err;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1); /* the parent died before prctl took effect */
        for (int s = 1; s < NSIG; s++)
            signal(s, SIG_DFL); /* fails harmlessly for SIGKILL, SIGSTOP, ... */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (log_fd >= 0 && (dup2(log_fd, STDOUT_FILENO) < 0 || dup2(log_fd, STDERR_FILENO) < 0)) {
            err = errno;
        } else {
            execvpe(argv[0], argv, env);
            err = errno;
        }
        ssize_t w = write(pipe_fd[1], &err, sizeof(err));
        (void)w;
        _exit(127);
    }
    close(pipe_fd[1]);
    pipe_fd[1] = -1;
    int child_err = 0;
    ssize_t got;
    while ((got = read(pipe_fd[0], &child_err, sizeof(child_err))) < 0 && errno == EINTR) {
    }
    if (got > 0) {
        fprintf(stderr, "proc: cannot run %s: %s\n", argv[0], strerror(child_err));
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        goto out;
    }
    p->pid = pid;
    rc = 0;
out:
    if (log_fd >= 0)
        close(log_fd);
    if (pipe_fd[0] >= 0)
        close(pipe_fd[0]);
    if (pipe_fd[1] >= 0)
        close(pipe_fd[1]);
    free(env);
    return rc;
}

int proc_signal(struct proc *p, int sig)
{
    if (p->pid <= 0)
        return -1;
    return kill(p->pid, sig) == 0 ? 0 : -1;
}

/* Reap without blocking: 1 when it has ended (p->status set, p->pid 0), else 0. */
static int reap(struct proc *p)
{
    int status;
    pid_t r;
    while ((r = waitpid(p->pid, &status, WNOHANG)) < 0 && errno == EINTR) {
    }
    if (r == 0)
        return 0;
    if (r == p->pid)
        p->status = status;
    p->pid = 0; /* reaped, or not our child any more (ECHILD) */
    return 1;
}

int proc_wait(struct proc *p, long timeout_ms, int *status)
{
    int64_t deadline = clock_now_ms() + timeout_ms;
    while (p->pid > 0 && !reap(p)) {
        int64_t left = deadline - clock_now_ms();
        if (timeout_ms >= 0 && left <= 0)
            return -1;
        clock_sleep_ms(timeout_ms >= 0 && left < 5 ? left : 5);
    }
    if (status)
        *status = p->status;
    return 0;
}

int proc_stop(struct proc *p, int sig, long timeout_ms)
{
    if (p->pid <= 0)
        return p->status;
    proc_signal(p, sig);
    int status;
    if (proc_wait(p, timeout_ms, &status) == 0)
        return status;
    proc_signal(p, SIGKILL);
    proc_wait(p, -1, NULL);
    return -1;
}

int proc_alive(struct proc *p)
{
    return p->pid > 0 && !reap(p);
}

int proc_wait_port(int port, long timeout_ms)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int64_t deadline = clock_now_ms() + timeout_ms;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        int ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
        close(fd);
        if (ok)
            return 0;
        if (timeout_ms >= 0 && clock_now_ms() >= deadline)
            return -1;
        clock_sleep_ms(10);
    }
}

int proc_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}
