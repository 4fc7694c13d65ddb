/* Version queries and static status text. */
#include "core/context_private.h"

unsigned lm_version(void) { return LM_VERSION_NUMBER; }

const char *lm_version_string(void) { return LM_VERSION_STRING; }

const char *lm_strerror(int status)
{
    switch (status) {
    case LM_OK: return "success";
    case LM_ERR_INVALID_ARGUMENT: return "invalid argument";
    case LM_ERR_OUT_OF_MEMORY: return "out of memory";
    case LM_ERR_SHAPE: return "shape mismatch or invalid shape";
    case LM_ERR_DTYPE: return "unsupported or mismatched dtype";
    case LM_ERR_NOT_FOUND: return "not found";
    case LM_ERR_EXISTS: return "already exists";
    case LM_ERR_OUT_OF_RANGE: return "value out of range";
    case LM_ERR_IO: return "input/output error";
    case LM_ERR_FORMAT: return "malformed file or configuration";
    case LM_ERR_LINALG: return "linear algebra routine failed";
    case LM_ERR_CALLBACK: return "host callback failed";
    case LM_ERR_UNSUPPORTED: return "not supported";
    case LM_ERR_NONFINITE: return "non-finite value (NaN or Inf)";
    case LM_ERR_ABI: return "incompatible struct size or ABI version";
    case LM_ERR_STATE: return "call made in the wrong state";
    case LM_ERR_CANCELLED: return "cancelled";
    case LM_ERR_INTERNAL: return "internal error";
    default: return "unknown status";
    }
}
