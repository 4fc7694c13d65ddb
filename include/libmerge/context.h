/* libmerge: the context (allocator, threads, seed, logging, last error,
 * strategy registry).
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 */
#ifndef LIBMERGE_CONTEXT_H
#define LIBMERGE_CONTEXT_H

#include "libmerge/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct lm_context lm_context;

typedef enum lm_log_level {
    LM_LOG_ERROR = 0,
    LM_LOG_WARN = 1,
    LM_LOG_INFO = 2,
    LM_LOG_DEBUG = 3
} lm_log_level;

/* Log sink. May be called from any worker thread of a merge, concurrently:
 * the host's function must be thread-safe. `message` is valid only during
 * the call. */
typedef void (*lm_log_fn)(int level, const char *message, void *user);

/* Custom allocator. `alloc` returns NULL on failure (libmerge then returns
 * LM_ERR_OUT_OF_MEMORY); `free` accepts NULL. Both may be called from
 * worker threads concurrently. */
typedef struct lm_allocator {
    uint32_t struct_size;
    void *(*alloc)(size_t size, void *user);
    void (*free)(void *ptr, void *user);
    void *user;
} lm_allocator;

/* Options for lm_context_create. Always start from LM_CONTEXT_OPTIONS_INIT
 * so that struct_size is right; fields are only ever appended, and the
 * library reads only the fields the caller's struct_size covers. */
typedef struct lm_context_options {
    uint32_t struct_size;
    int32_t n_threads;              /* worker threads; 0 = online cores     */
    uint64_t seed;                  /* root of every random choice          */
    lm_log_fn log;                  /* NULL = no logging                    */
    void *log_user;
    int32_t log_level;              /* messages above this level dropped    */
    const lm_allocator *allocator;  /* NULL = malloc/free; copied at create */
} lm_context_options;

#define LM_CONTEXT_OPTIONS_INIT \
    { (uint32_t)sizeof(lm_context_options), 0, 0, NULL, NULL, LM_LOG_WARN, NULL }

/* Fills *options with the defaults (LM_CONTEXT_OPTIONS_INIT). */
LM_API void lm_context_options_init(lm_context_options *options);

/* Create a context. `options` may be NULL for defaults. The built-in
 * strategies are registered in every new context.
 * Errors: LM_ERR_INVALID_ARGUMENT (out NULL, negative n_threads),
 * LM_ERR_ABI (struct_size too small or too large for this library),
 * LM_ERR_OUT_OF_MEMORY. */
LM_API lm_status lm_context_create(const lm_context_options *options,
                                   lm_context **out);
/* Destroy a context; NULL is accepted. Every handle created from it must be
 * destroyed first. */
LM_API void lm_context_destroy(lm_context *ctx);

/* Effective worker thread count (>= 1). */
LM_API int lm_context_threads(const lm_context *ctx);
/* Root seed given at creation. */
LM_API uint64_t lm_context_seed(const lm_context *ctx);

/* The detailed message of the most recent failure reported on this context
 * (what failed, which tensor/file/field). Never NULL; "" when there has been
 * no failure. The pointer stays valid until the next failing call on the
 * same context; with several threads failing on one context use
 * lm_context_copy_error instead. */
LM_API const char *lm_context_error(const lm_context *ctx);
/* Status of the most recent failure (LM_OK if none). */
LM_API lm_status lm_context_error_status(const lm_context *ctx);
/* Copy the last message into buf (always NUL-terminated when size > 0);
 * returns the full message length. Thread-safe. */
LM_API size_t lm_context_copy_error(const lm_context *ctx, char *buf,
                                    size_t size);
/* Forget the last error. */
LM_API void lm_context_clear_error(lm_context *ctx);

/* Thread-safety: a context may be shared by threads. Registration of
 * strategies must happen before it is shared (the registry is not locked);
 * error reporting and allocation are thread-safe. */

/* Host utilities (also used by strategies and other plugins). */
/* Record a failure on ctx: status plus a printf-style message. Returns
 * `status` so callers can write `return lm_context_set_error(...)`. */
LM_API lm_status lm_context_set_error(lm_context *ctx, lm_status status,
                                      const char *format, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Allocation through the context's allocator (thread-safe). lm_free
 * accepts NULL. */
LM_API void *lm_alloc(lm_context *ctx, size_t size);
LM_API void lm_free(lm_context *ctx, void *ptr);
/* Send a message to the context's log callback if `level` passes. */
LM_API void lm_log(lm_context *ctx, int level, const char *format, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_CONTEXT_H */
