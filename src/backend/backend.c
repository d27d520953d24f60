/* backend.c: picks a backend by name. Only this file and the backend folders know which exist. */
#include "backend/backend.h"
#include "core/error.h"

#include <string.h>

int loom_backend_create(const struct loom_backend_options *opts, struct loom_backend **out)
{
    const char *dev = opts->device ? opts->device : "cpu";
    if (!strcmp(dev, "cpu")) return loom_backend_cpu_create(opts, out);
    if (!strcmp(dev, "cuda")) {
#ifdef LOOM_HAVE_CUDA
        return loom_backend_cuda_create(opts, out);
#else
        return loom_fail(LOOM_EUNSUPPORTED, "--device cuda: this loom was built without CUDA (nvcc not found)");
#endif
    }
    return loom_fail(LOOM_EINVAL, "unknown --device '%s' (expected cpu or cuda)", dev);
}

void loom_backend_destroy(struct loom_backend *be)
{
    if (be) be->ops->destroy(be);
}

#ifndef LOOM_HAVE_CUDA
bool loom_backend_cuda_available(void)
{
    return false;
}
#endif
