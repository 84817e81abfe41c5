/*
 * backend: finding a backend by name (see backend.h). The CUDA backend is
 * looked up only in builds that have it (MILLRACE_CUDA: the Makefile defines
 * it where nvcc exists and CUDA is not 0; never in the sanitizer builds).
 */
#include "kernels/backend.h"

#include <string.h>

const struct backend_ops *backend_find(const char *name)
{
    if (!name || strcmp(name, "cpu") == 0)
        return &backend_cpu;
#ifdef MILLRACE_CUDA
    if (strcmp(name, "cuda") == 0)
        return &backend_cuda;
    if (strcmp(name, "auto") == 0) {
        char why[256];
        return kcu_device_usable(why, sizeof(why)) ? &backend_cuda : &backend_cpu;
    }
#else
    if (strcmp(name, "auto") == 0)
        return &backend_cpu;
#endif
    return NULL;
}
