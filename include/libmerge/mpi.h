/* libmerge: reducing activation statistics across MPI ranks.
 *
 * Copyright libmerge authors. SPDX-License-Identifier: Apache-2.0
 *
 * Header-only, for hosts that already use MPI (include <mpi.h> first):
 * libmerge itself never links MPI. Every rank collects statistics on its
 * share of the calibration data; lm_stats_allreduce gives every rank the
 * sum (X^T X and row counts per key), exactly as one process observing
 * all rows would have (up to the order of floating-point additions).
 * Not part of the self-contained header set (it needs <mpi.h>).
 */
#ifndef LIBMERGE_MPI_H
#define LIBMERGE_MPI_H

#include <stdlib.h>
#include <string.h>

#include "libmerge/stats.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One key as exchanged between ranks. */
typedef struct lm_mpi_stats_key {
    uint64_t model, d_in;
    char name[240];
} lm_mpi_stats_key;

static int lm_mpi_key_cmp_(const void *a, const void *b)
{
    const lm_mpi_stats_key *x = (const lm_mpi_stats_key *)a,
                           *y = (const lm_mpi_stats_key *)b;
    if (x->model != y->model)
        return x->model < y->model ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* *out = a new lm_stats (in `ctx`, the context of `local`) holding the sum of every rank's
 * `local` over `comm`; keys are the union of the ranks' keys. Collective:
 * every rank of comm must call it. Returns LM_ERR_SHAPE when ranks
 * disagree on a key's d_in, LM_ERR_IO when MPI fails, LM_ERR_OUT_OF_MEMORY,
 * LM_ERR_INVALID_ARGUMENT for names of 240 bytes or more. */
static inline lm_status lm_stats_allreduce(lm_context *ctx,
                                           const lm_stats *local,
                                           MPI_Comm comm, lm_stats **out)
{
    int ranks = 1, n = (int)lm_stats_count(local), total = 0;
    lm_status st = LM_OK;
    MPI_Comm_size(comm, &ranks);
    int *counts = (int *)calloc((size_t)ranks, sizeof(int));
    int *displs = (int *)calloc((size_t)ranks, sizeof(int));
    lm_mpi_stats_key *mine = (lm_mpi_stats_key *)calloc(n ? (size_t)n : 1,
                                                        sizeof(*mine));
    lm_mpi_stats_key *all = NULL;
    double *buf = NULL;
    *out = NULL;
    if (!counts || !displs || !mine)
        st = LM_ERR_OUT_OF_MEMORY;
    for (int i = 0; st == LM_OK && i < n; i++) {
        size_t model, d;
        const char *name;
        const double *g;
        uint64_t rows;
        lm_stats_at(local, (size_t)i, &model, &name);
        lm_stats_find(local, model, name, &g, &d, &rows);
        if (strlen(name) >= sizeof(mine[i].name))
            st = LM_ERR_INVALID_ARGUMENT;
        else
            strcpy(mine[i].name, name);
        mine[i].model = model;
        mine[i].d_in = d;
    }
    /* Agree on failures before any other collective. */
    int bad = st != LM_OK, any_bad = 0;
    MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, comm);
    if (any_bad) {
        free(counts);
        free(displs);
        free(mine);
        return st != LM_OK ? st : LM_ERR_IO;
    }
    int bytes = n * (int)sizeof(lm_mpi_stats_key);
    MPI_Allgather(&bytes, 1, MPI_INT, counts, 1, MPI_INT, comm);
    for (int r = 0; r < ranks; r++) {
        displs[r] = total;
        total += counts[r];
    }
    all = (lm_mpi_stats_key *)malloc(total ? (size_t)total : 1);
    if (!all)
        st = LM_ERR_OUT_OF_MEMORY; /* still take part in the collectives */
    MPI_Allgatherv(mine, bytes, MPI_BYTE, all ? (void *)all : (void *)mine,
                   counts, displs, MPI_BYTE, comm);
    size_t keys = (size_t)total / sizeof(lm_mpi_stats_key), uniq = 0;
    if (st == LM_OK) {
        qsort(all, keys, sizeof(*all), lm_mpi_key_cmp_);
        for (size_t i = 0; i < keys; i++) {
            if (uniq && !lm_mpi_key_cmp_(&all[uniq - 1], &all[i])) {
                if (all[uniq - 1].d_in != all[i].d_in)
                    st = LM_ERR_SHAPE;
                continue;
            }
            all[uniq++] = all[i];
        }
    }
    /* One buffer for the largest key, allocated before the reductions so
     * that no rank leaves the loop early (which would hang the others). */
    size_t maxd = 0;
    for (size_t k = 0; st == LM_OK && k < uniq; k++)
        if (all[k].d_in > maxd)
            maxd = (size_t)all[k].d_in;
    if (st == LM_OK && !(buf = (double *)calloc(maxd * maxd + 1, sizeof(double))))
        st = LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK)
        st = lm_stats_create(ctx, out);
    bad = st != LM_OK;
    MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, comm);
    for (size_t k = 0; !any_bad && k < uniq; k++) {
        size_t d = (size_t)all[k].d_in, dd;
        const double *g;
        uint64_t rows = 0;
        memset(buf, 0, (d * d + 1) * sizeof(double));
        if (lm_stats_find(local, (size_t)all[k].model, all[k].name, &g, &dd,
                         &rows) == LM_OK)
            memcpy(buf, g, d * d * sizeof(double));
        else
            lm_context_clear_error(ctx);
        buf[d * d] = (double)rows; /* exact below 2^53 rows */
        if (MPI_Allreduce(MPI_IN_PLACE, buf, (int)(d * d + 1), MPI_DOUBLE,
                          MPI_SUM, comm) != MPI_SUCCESS && st == LM_OK)
            st = LM_ERR_IO;
        if (st == LM_OK)
            st = lm_stats_add_gram(*out, (size_t)all[k].model, all[k].name,
                                   buf, d, (uint64_t)buf[d * d]);
    }
    free(buf);
    if (st != LM_OK || any_bad) {
        lm_stats_destroy(*out);
        *out = NULL;
    }
    free(all);
    free(counts);
    free(displs);
    free(mine);
    return any_bad && st == LM_OK ? LM_ERR_SHAPE : st;
}

#ifdef __cplusplus
}
#endif
#endif /* LIBMERGE_MPI_H */
