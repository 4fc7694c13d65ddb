/* Subcommands of lmerge; each returns the process exit code. */
#ifndef LMERGE_COMMANDS_H
#define LMERGE_COMMANDS_H

#include <stdbool.h>

#include <libmerge.h>
#include <libmerge/sys/strategy.h>

int lmerge_demo(int argc, char **argv);
int lmerge_methods(int argc, char **argv);
int lmerge_run(int argc, char **argv);
int lmerge_info(int argc, char **argv);
int lmerge_stats(int argc, char **argv);

#ifdef LMERGE_MPI
/* mpi_exec.c: this process's rank and the number of ranks (0 and 1
 * without MPI_Init), and the distributed execution of a plan into a file
 * sink that exists on rank 0 only. Returns 0 when every rank succeeded and
 * rank 0 committed the output. */
int lmerge_mpi_rank(void);
int lmerge_mpi_size(void);
int lmerge_mpi_execute(lm_context *ctx, lm_plan *plan, const lm_model *base,
                       bool has_dtype, lm_dtype dtype, const char *method,
                       lm_file_sink *sink);
#endif

/* interrupt.c: SIGINT/SIGTERM/SIGHUP set a flag that cancels the run;
 * lmerge_interrupted() returns the signal received, or 0. */
void lmerge_interrupt_install(void);
int lmerge_interrupted(void);

/* run_stats.c: a config's `stats:` (loaded, summed, set on the plan;
 * *stats to destroy after the plan) and `purify:` (options set; keep "cv"
 * tuned, the choice in *tuned_keep, else NaN). Print the error and return
 * -1 on failure. */
struct lmerge_config;
int lmerge_apply_stats(lm_context *ctx, lm_plan *plan,
                       const struct lmerge_config *c, const char *path,
                       lm_stats **stats);
int lmerge_apply_purify(lm_context *ctx, lm_plan *plan,
                        const struct lmerge_config *c, const char *path,
                        double *tuned_keep);

/* gguf_out.c: the sink of a GGUF output whose storage the config sets
 * (`gguf_type`, or an explicit dtype), into dir/model.gguf: returns 1 with
 * *sink set, 0 when the default sink applies (lm_file_sink_create_for), -1
 * after printing an error. */
int lmerge_gguf_sink(lm_context *ctx, const char *dir, const lm_model *base,
                     const char *gguf_type, bool dtype_given,
                     const char *const *keys, const char *const *values,
                     size_t n_meta, lm_file_sink **sink);

/* Copy non-weight files of a base model directory into out_dir. */
int lmerge_copy_side_files(const char *base_path, const char *out_dir,
                           char *err, size_t err_size);

#endif
