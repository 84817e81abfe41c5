/*
 * serve: `millrace-worker serve`, a runner in the Redis job queue.
 *
 * Registers as a runner, heartbeats from its own thread (which also runs the
 * fleet's reaper under its lease), claims jobs whenever the scheduler has
 * room, steps the scheduler, streams each step's text to the jobs' streams,
 * and records every finished job through the fenced finish. A job cancelled
 * meanwhile, or handed to another runner after this one was presumed dead,
 * is dropped at the next step. SIGTERM or SIGINT: stop claiming, let running
 * jobs finish for up to the grace period, hand back the rest, deregister,
 * exit 0: nothing is lost.
 */
#pragma once

/* Parse the serve flags from argv (argv[0] is "serve") and run until
 * signalled. Returns the process's exit status. */
int serve_main(int argc, char **argv);
