/* `mpirun -n N lmerge run ...`: the tensors are shared out among the ranks
 * by estimated cost; rank 0 lays out the output files (the same sink as a
 * single process) and every rank writes its tensors into them at their
 * final offsets; after a barrier rank 0 commits (fsync, rename, index).
 * The files are byte-identical to a single-process run. A failure on any
 * rank is reported with the rank and tensor, and nothing is committed. */
#include <fcntl.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "commands.h"

#define MAX_FILES 4096

int lmerge_mpi_rank(void)
{
    int r = 0, init = 0;
    MPI_Initialized(&init);
    if (init)
        MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

int lmerge_mpi_size(void)
{
    int n = 1, init = 0;
    MPI_Initialized(&init);
    if (init)
        MPI_Comm_size(MPI_COMM_WORLD, &n);
    return n;
}

static bool svd_method(const char *m)
{
    static const char *const names[] = {"tsv", "iso_c", "iso_cts", "knots",
                                        "esm"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(m, names[i]))
            return true;
    return false;
}

/* Cost of merging one tensor: bytes for elementwise methods,
 * d_out * d_in * min(d_out, d_in) for SVD methods' matrices. */
static double cost(const char *method, const lm_tensor_desc *d)
{
    if (svd_method(method) && d->ndim == 2) {
        double m = (double)d->shape[0], n = (double)d->shape[1];
        return m * n * (m < n ? m : n);
    }
    return (double)d->nbytes;
}

struct by_cost {
    double cost;
    size_t index;
};

static int cmp_cost(const void *a, const void *b)
{
    const struct by_cost *x = a, *y = b;
    if (x->cost != y->cost)
        return x->cost > y->cost ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Longest-processing-time-first: deterministic for the same inputs. */
static void assign(const char *method, const lm_tensor_desc *d, size_t n,
                   int ranks, int *owner)
{
    struct by_cost *order = calloc(n ? n : 1, sizeof(*order));
    double *load = calloc((size_t)ranks, sizeof(double));
    for (size_t i = 0; i < n; i++)
        order[i] = (struct by_cost){cost(method, &d[i]), i};
    qsort(order, n, sizeof(*order), cmp_cost);
    for (size_t k = 0; k < n; k++) {
        int best = 0;
        for (int r = 1; r < ranks; r++)
            if (load[r] < load[best])
                best = r;
        owner[order[k].index] = best;
        load[best] += order[k].cost;
    }
    free(order);
    free(load);
}

static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off)
{
    const char *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* Shares rank 0's file layout: file paths and each tensor's file and
 * offset. */
static int share_layout(lm_file_sink *sink, size_t n, char (*paths)[1024],
                        int *n_files, int *file_of, uint64_t *offset)
{
    int rank = lmerge_mpi_rank(), good = 1;
    if (rank == 0) {
        *n_files = 0;
        for (size_t i = 0; good && i < n; i++) {
            const char *path;
            if (lm_file_sink_layout(sink, i, &path, &offset[i]) != LM_OK) {
                good = 0;
                break;
            }
            int f = 0;
            while (f < *n_files && strcmp(paths[f], path))
                f++;
            if (f == *n_files) {
                if (f == MAX_FILES) {
                    good = 0;
                    break;
                }
                snprintf(paths[f], sizeof(paths[f]), "%s", path);
                (*n_files)++;
            }
            file_of[i] = f;
        }
    }
    /* Every rank takes part in every broadcast, even after a failure. */
    MPI_Bcast(&good, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (!good)
        return -1;
    MPI_Bcast(n_files, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Bcast(paths, *n_files * 1024, MPI_CHAR, 0, MPI_COMM_WORLD);
    MPI_Bcast(file_of, (int)n, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Bcast(offset, (int)n, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    return 0;
}

/* Merges this rank's tensors into the shared files; *failed_at is the
 * tensor that failed (or -1) and msg its message. */
static int merge_mine(lm_context *ctx, lm_plan *plan, const lm_model *base,
                      const lm_tensor_desc *d, size_t n, const int *owner,
                      char (*paths)[1024], int n_files, const int *file_of,
                      const uint64_t *offset, long *failed_at, char *msg,
                      size_t msg_size)
{
    int rank = lmerge_mpi_rank();
    int *fds = malloc((size_t)n_files * sizeof(int));
    for (int f = 0; f < n_files; f++)
        fds[f] = -1;
    lm_merger *merger = NULL;
    int rc = 0;
    *failed_at = -1;
    if (lm_merger_create(plan, &merger) != LM_OK) {
        snprintf(msg, msg_size, "%s", lm_context_error(ctx));
        rc = -1;
    }
    for (size_t i = 0; !rc && i < n; i++) {
        if (owner[i] != rank)
            continue;
        lm_tensor *out = NULL;
        int f = file_of[i];
        if (fds[f] < 0)
            fds[f] = open(paths[f], O_WRONLY);
        lm_status st = fds[f] < 0 ? LM_ERR_IO
                       : lm_tensor_create(ctx, d[i].dtype, d[i].ndim,
                                          d[i].shape, &out);
        if (st == LM_OK)
            st = lm_merger_apply_to(merger, d[i].name,
                                    lm_model_at(base, i), out);
        if (st == LM_OK && pwrite_all(fds[f], lm_tensor_cdata(out),
                                      d[i].nbytes, offset[i]))
            st = LM_ERR_IO;
        if (st != LM_OK) {
            snprintf(msg, msg_size, "%s", st == LM_ERR_IO && !*lm_context_error(ctx)
                                              ? "cannot write the output file"
                                              : lm_context_error(ctx));
            *failed_at = (long)i;
            rc = -1;
        }
        lm_tensor_destroy(out);
    }
    for (int f = 0; f < n_files; f++)
        if (fds[f] >= 0) {
            /* Each writer flushes its own pages (needed on network file
             * systems before rank 0 renames). */
            if (fsync(fds[f]) && !rc) {
                snprintf(msg, msg_size, "cannot flush '%s'", paths[f]);
                rc = -1;
            }
            close(fds[f]);
        }
    free(fds);
    lm_merger_destroy(merger);
    return rc;
}

int lmerge_mpi_execute(lm_context *ctx, lm_plan *plan, const lm_model *base,
                       bool has_dtype, lm_dtype dtype, const char *method,
                       lm_file_sink *sink)
{
    int rank = lmerge_mpi_rank(), ranks = lmerge_mpi_size();
    size_t n = lm_model_count(base);
    lm_tensor_desc *d = calloc(n ? n : 1, sizeof(*d));
    const lm_tensor_desc **list = calloc(n ? n : 1, sizeof(*list));
    int *owner = calloc(n ? n : 1, sizeof(int)), *file_of = calloc(n ? n : 1, sizeof(int));
    uint64_t *offset = calloc(n ? n : 1, sizeof(uint64_t));
    char (*paths)[1024] = calloc(MAX_FILES, sizeof(*paths));
    for (size_t i = 0; i < n; i++) {
        const lm_tensor *t = lm_model_at(base, i);
        list[i] = &d[i];
        d[i].struct_size = sizeof(d[i]);
        d[i].name = lm_model_name_at(base, i);
        d[i].dtype = has_dtype ? dtype : lm_tensor_dtype(t);
        d[i].ndim = lm_tensor_ndim(t);
        for (int k = 0; k < d[i].ndim; k++)
            d[i].shape[k] = lm_tensor_dim(t, k);
        d[i].nbytes = lm_tensor_numel(t) * lm_dtype_size(d[i].dtype);
    }
    assign(method, d, n, ranks, owner);
    const lm_sink_vtable *vt = rank == 0 ? lm_file_sink_vtable(sink) : NULL;
    int ok = rank != 0 || vt->begin(list, n, vt->user) == LM_OK;
    if (rank == 0 && !ok)
        fprintf(stderr, "lmerge run: rank 0: %s\n", lm_context_error(ctx));
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    int failed = !ok, n_files = 0;
    if (ok && share_layout(sink, n, paths, &n_files, file_of, offset))
        failed = 1;
    long failed_at = -1;
    char msg[1024] = "";
    if (ok && !failed &&
        merge_mine(ctx, plan, base, d, n, owner, paths, n_files, file_of,
                   offset, &failed_at, msg, sizeof(msg))) {
        fprintf(stderr, "lmerge run: rank %d of %d: %s%s%s: %s\n", rank,
                ranks, failed_at >= 0 ? "tensor '" : "",
                failed_at >= 0 ? d[failed_at].name : "",
                failed_at >= 0 ? "'" : "", msg);
        failed = 1;
    }
    int any_failed = 0;
    MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    int committed = 0;
    if (rank == 0 && ok) {
        /* Nothing is committed unless every rank succeeded: no index, no
         * renamed shard. */
        lm_status st = vt->end(!any_failed, vt->user);
        committed = !any_failed && st == LM_OK;
        if (!any_failed && st != LM_OK)
            fprintf(stderr, "lmerge run: rank 0: %s\n", lm_context_error(ctx));
    }
    MPI_Bcast(&committed, 1, MPI_INT, 0, MPI_COMM_WORLD);
    free(d);
    free(list);
    free(owner);
    free(file_of);
    free(offset);
    free(paths);
    return committed ? 0 : -1;
}
