/* lmerge: the libmerge command-line tool. */
#include <cblas.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"

#ifdef LMERGE_MPI
#include <mpi.h>
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "usage: lmerge COMMAND [ARGS]\n"
            "\n"
            "commands:\n"
            "  demo       merge small example models generated in memory and\n"
            "             check the result against an independent computation\n"
            "  run        merge models on disk from a mergekit-style YAML config\n"
            "  info       list the tensors and metadata of a model file\n"
            "  methods    list merge methods with their parameters and defaults\n"
            "  stats      inspect, check or sum activation-statistics files\n"
            "  version    print the library version\n");
}

static int dispatch(int argc, char **argv);

int main(int argc, char **argv)
{
#ifdef LMERGE_MPI
    /* Under mpirun every rank runs the same command; see mpi_exec.c. */
    MPI_Init(&argc, &argv);
    int rc = dispatch(argc, argv);
    MPI_Finalize();
    return rc;
#else
    return dispatch(argc, argv);
#endif
}

static int dispatch(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
#ifdef OPENBLAS_VERSION
    /* libmerge parallelises over tensors; single-threaded BLAS inside each
     * worker keeps results bit-identical from run to run. */
    openblas_set_num_threads(1);
#endif
    const char *cmd = argv[1];
    if (strcmp(cmd, "demo") == 0)
        return lmerge_demo(argc - 1, argv + 1);
    if (strcmp(cmd, "run") == 0)
        return lmerge_run(argc - 1, argv + 1);
    if (strcmp(cmd, "info") == 0)
        return lmerge_info(argc - 1, argv + 1);
    if (strcmp(cmd, "stats") == 0)
        return lmerge_stats(argc - 1, argv + 1);
    if (strcmp(cmd, "methods") == 0)
        return lmerge_methods(argc - 1, argv + 1);
    if (strcmp(cmd, "version") == 0) {
        printf("lmerge %s (libmerge %s)\n", LM_VERSION_STRING,
               lm_version_string());
        return 0;
    }
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 ||
        strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "lmerge: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
