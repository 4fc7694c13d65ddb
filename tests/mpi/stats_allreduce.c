/* lm_stats_allreduce under mpirun: each rank observes its own rows (and
 * rank 1 an extra key); the reduced statistics must equal one process
 * observing every rank's rows (relative 1e-12, counts exact). */
#include <math.h>
#include <mpi.h>
#include <stdio.h>

#include <libmerge.h>
#include <libmerge/mpi.h>

#define D 5
#define ROWS 7

static void rows_of(int rank, float *x)
{
    for (int i = 0; i < ROWS * D; i++)
        x[i] = (float)sin(1.0 + rank * 100.0 + i);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, ranks, fail = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    lm_context *ctx;
    lm_stats *local, *sum = NULL, *want;
    float x[ROWS * D];
    lm_context_create(NULL, &ctx);
    lm_stats_create(ctx, &local);
    rows_of(rank, x);
    lm_stats_observe(local, 0, "w", x, ROWS, D);
    if (rank == 1)
        lm_stats_observe(local, 2, "extra", x, 3, D);
    if (lm_stats_allreduce(ctx, local, MPI_COMM_WORLD, &sum) != LM_OK) {
        fprintf(stderr, "rank %d: allreduce failed: %s\n", rank, lm_context_error(ctx));
        fail = 1;
    }
    lm_stats_create(ctx, &want);
    for (int r = 0; r < ranks; r++) {
        rows_of(r, x);
        lm_stats_observe(want, 0, "w", x, ROWS, D);
        if (r == 1)
            lm_stats_observe(want, 2, "extra", x, 3, D);
    }
    for (size_t k = 0; !fail && k < lm_stats_count(want); k++) {
        size_t model, dw, dg;
        const char *name;
        const double *gw, *gg;
        uint64_t nw, ng;
        lm_stats_at(want, k, &model, &name);
        lm_stats_find(want, model, name, &gw, &dw, &nw);
        if (lm_stats_find(sum, model, name, &gg, &dg, &ng) != LM_OK || dg != dw || ng != nw) {
            fprintf(stderr, "rank %d: key (%zu, %s) missing or wrong count\n", rank, model, name);
            fail = 1;
            break;
        }
        for (size_t i = 0; i < dw * dw; i++)
            if (fabs(gg[i] - gw[i]) > 1e-12 * (1 + fabs(gw[i])))
                fail = 1;
    }
    if (!fail && lm_stats_count(sum) != lm_stats_count(want))
        fail = 1;
    int any = 0;
    MPI_Allreduce(&fail, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0)
        printf("%s: stats allreduce over %d ranks\n", any ? "FAIL" : "ok", ranks);
    lm_stats_destroy(sum);
    lm_stats_destroy(want);
    lm_stats_destroy(local);
    lm_context_destroy(ctx);
    MPI_Finalize();
    return any;
}
