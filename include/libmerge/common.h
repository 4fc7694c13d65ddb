/* libmerge: export macro, version, status codes.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_COMMON_H
#define LIBMERGE_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Every exported function carries LM_API; everything else in the shared
 * object has hidden visibility. */
#if defined(_WIN32)
#  if defined(LM_BUILDING_LIBRARY)
#    define LM_API __declspec(dllexport)
#  elif defined(LM_STATIC)
#    define LM_API
#  else
#    define LM_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) || defined(__clang__)
#  define LM_API __attribute__((visibility("default")))
#else
#  define LM_API
#endif

/* Functions of the experimental tier (headers under libmerge/experimental/:
 * NSC and the purification tuners) carry LM_EXPERIMENTAL instead of
 * LM_API. They are exported the same way, but outside the ABI promise:
 * they may change or go in any release, without a SONAME bump, and the
 * ABI check ignores them (docs/api.md, "Experimental tier"). */
#define LM_EXPERIMENTAL LM_API

#define LM_VERSION_MAJOR 0
#define LM_VERSION_MINOR 2
#define LM_VERSION_PATCH 0
/* major*10000 + minor*100 + patch, as zstd does. */
#define LM_VERSION_NUMBER \
    (LM_VERSION_MAJOR * 10000 + LM_VERSION_MINOR * 100 + LM_VERSION_PATCH)
#define LM_VERSION_STRING "0.2.0"
/* The SONAME is libmerge.so.LM_SOVERSION; it changes on every ABI break. */
#define LM_SOVERSION 1

/* "Every model" where a function takes a model index (projections,
 * per-model parameters). */
#define LM_ALL_MODELS ((size_t)-1)

/* Runtime version of the library actually loaded (compare with
 * LM_VERSION_NUMBER to detect a header/library mismatch). */
LM_API unsigned lm_version(void);
LM_API const char *lm_version_string(void);

/* Status codes. The numeric values are pinned forever: a value is never
 * reused or renumbered, new codes are only appended. 0 is success. */
typedef enum lm_status {
    LM_OK = 0,
    LM_ERR_INVALID_ARGUMENT = -1, /* NULL handle, bad enum, bad count       */
    LM_ERR_OUT_OF_MEMORY = -2,    /* an allocation failed                    */
    LM_ERR_SHAPE = -3,            /* tensor shapes disagree or are invalid   */
    LM_ERR_DTYPE = -4,            /* unsupported or mismatched dtype         */
    LM_ERR_NOT_FOUND = -5,        /* no such tensor, strategy or parameter   */
    LM_ERR_EXISTS = -6,           /* name already registered or present      */
    LM_ERR_OUT_OF_RANGE = -7,     /* value outside its documented range      */
    LM_ERR_IO = -8,               /* open/read/write/rename failed           */
    LM_ERR_FORMAT = -9,           /* a file or config is malformed           */
    LM_ERR_LINALG = -10,          /* LAPACK reported failure / no converge   */
    LM_ERR_CALLBACK = -11,        /* a host callback asked to stop/failed    */
    LM_ERR_UNSUPPORTED = -12,     /* valid request this build cannot do      */
    LM_ERR_NONFINITE = -13,       /* NaN or Inf where finite values needed   */
    LM_ERR_ABI = -14,             /* struct_size / abi_version not accepted  */
    LM_ERR_STATE = -15,           /* call made in the wrong order            */
    LM_ERR_CANCELLED = -16,       /* cancelled through a progress callback   */
    LM_ERR_INTERNAL = -17         /* a bug in libmerge: please report        */
} lm_status;

/* Static English text for a status code; never NULL (unknown codes give
 * "unknown status"). */
LM_API const char *lm_strerror(int status);

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_COMMON_H */
