/* lm_output_dir: a directory appears complete or not at all, refuses
 * non-empty destinations without overwrite, replaces them as a whole with
 * it, and never accepts a destination that overlaps an input. Checked
 * with plain POSIX calls on a scratch directory. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static char root[256];

static void setup(void)
{
    snprintf(root, sizeof(root), "/tmp/lm_output_dir_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(root));
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    ck_assert_int_eq(system(cmd), 0);
}

static const char *at(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof(buf[k]), "%s/%s", root, name);
    return buf[k];
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

static char *read_text(const char *path)
{
    static char buf[256];
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Number of entries in dir (-1 when it does not exist). */
static int entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static lm_status begin(lm_context *ctx, const char *dest, int overwrite,
                       const char *input, lm_output_dir **out)
{
    lm_output_dir_options o;
    lm_output_dir_options_init(&o);
    o.overwrite = overwrite;
    o.inputs = &input;
    o.n_inputs = input ? 1 : 0;
    return lm_output_dir_begin(ctx, dest, &o, out);
}

START_TEST(new_directory_appears_at_commit)
{
    lm_context *ctx = tu_context(1, 0);
    lm_output_dir *o;
    ck_assert_ok(begin(ctx, at("a/b/out"), 0, NULL, &o));
    const char *staging = lm_output_dir_path(o);
    ck_assert_msg(strstr(staging, "/a/b/.out.lmerge-") != NULL, "%s", staging);
    char file[600];
    snprintf(file, sizeof(file), "%s/model.safetensors", staging);
    write_text(file, "new");
    ck_assert_int_eq(entries(at("a/b/out")), -1); /* invisible until commit */
    ck_assert_ok(lm_output_dir_commit(o));
    ck_assert_str_eq(read_text(at("a/b/out/model.safetensors")), "new");
    ck_assert_int_eq(entries(at("a/b")), 1); /* no staging left behind */
    ck_assert_status(lm_output_dir_commit(o), LM_ERR_STATE);
    lm_output_dir_destroy(o);
    ck_assert_int_eq(entries(at("a/b/out")), 1);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(failure_leaves_nothing_not_even_parents)
{
    lm_context *ctx = tu_context(1, 0);
    lm_output_dir *o;
    ck_assert_ok(begin(ctx, at("p/q/out"), 0, NULL, &o));
    char file[600];
    snprintf(file, sizeof(file), "%s/half", lm_output_dir_path(o));
    write_text(file, "partial");
    lm_output_dir_destroy(o); /* never committed */
    ck_assert_int_eq(entries(root), 0);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(empty_directory_is_replaced)
{
    lm_context *ctx = tu_context(1, 0);
    ck_assert_int_eq(mkdir(at("out"), 0777), 0);
    lm_output_dir *o;
    ck_assert_ok(begin(ctx, at("out/"), 0, NULL, &o)); /* trailing slash */
    char file[600];
    snprintf(file, sizeof(file), "%s/x", lm_output_dir_path(o));
    write_text(file, "1");
    ck_assert_ok(lm_output_dir_commit(o));
    lm_output_dir_destroy(o);
    ck_assert_str_eq(read_text(at("out/x")), "1");
    ck_assert_int_eq(entries(root), 1);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(non_empty_refused_without_overwrite)
{
    lm_context *ctx = tu_context(1, 0);
    ck_assert_int_eq(mkdir(at("out"), 0777), 0);
    write_text(at("out/model.safetensors.index.json"), "old index");
    lm_output_dir *o = NULL;
    ck_assert_status(begin(ctx, at("out"), 0, NULL, &o), LM_ERR_EXISTS);
    ck_assert_ptr_null(o);
    ck_assert_msg(strstr(lm_context_error(ctx), "model.safetensors.index.json") &&
                      strstr(lm_context_error(ctx), "not empty"),
                  "%s", lm_context_error(ctx));
    ck_assert_int_eq(entries(root), 1); /* no staging directory */
    write_text(at("file"), "x");
    ck_assert_status(begin(ctx, at("file"), 1, NULL, &o), LM_ERR_EXISTS);
    lm_context_destroy(ctx);
}
END_TEST

/* The old files go as a whole: a stale index cannot outlive the run. */
START_TEST(overwrite_replaces_the_whole_directory)
{
    lm_context *ctx = tu_context(1, 0);
    ck_assert_int_eq(mkdir(at("out"), 0777), 0);
    ck_assert_int_eq(mkdir(at("out/sub"), 0777), 0);
    write_text(at("out/model.safetensors.index.json"), "old index");
    write_text(at("out/sub/x"), "old");
    lm_output_dir *o;
    ck_assert_ok(begin(ctx, at("out"), 1, NULL, &o));
    char file[600];
    snprintf(file, sizeof(file), "%s/model.safetensors", lm_output_dir_path(o));
    write_text(file, "new");
    ck_assert_str_eq(read_text(at("out/model.safetensors.index.json")),
                     "old index"); /* untouched before commit */
    ck_assert_ok(lm_output_dir_commit(o));
    lm_output_dir_destroy(o);
    ck_assert_int_eq(entries(at("out")), 1);
    ck_assert_str_eq(read_text(at("out/model.safetensors")), "new");
    ck_assert_int_eq(entries(root), 1); /* the old contents are gone */
    lm_context_destroy(ctx);
}
END_TEST

/* dest refused against one input, with overwrite (the dangerous case). */
static void refused(lm_context *ctx, const char *dest, const char *input,
                    const char *why)
{
    lm_output_dir *o = NULL;
    ck_assert_status(begin(ctx, dest, 1, input, &o), LM_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(lm_context_error(ctx), why) != NULL, "%s: %s", dest,
                  lm_context_error(ctx));
    ck_assert_ptr_null(o);
}

START_TEST(inputs_are_protected)
{
    lm_context *ctx = tu_context(1, 0);
    ck_assert_int_eq(mkdir(at("models"), 0777), 0);
    ck_assert_int_eq(mkdir(at("models/base"), 0777), 0);
    write_text(at("models/base/model.safetensors"), "base");
    write_text(at("models/ft.safetensors"), "ft");
    ck_assert_int_eq(symlink(at("models/base"), at("link")), 0);
    char base_dir[512], base_file[512];
    snprintf(base_dir, sizeof(base_dir), "%s", at("models/base"));
    snprintf(base_file, sizeof(base_file), "%s",
             at("models/base/model.safetensors"));
    refused(ctx, base_dir, base_dir, "is the input directory");
    refused(ctx, base_dir, base_file, "is the directory holding the input");
    refused(ctx, at("models/base/../base"), base_file, "holding the input");
    refused(ctx, at("link"), base_file, "holding the input");
    refused(ctx, at("models"), base_dir, "contains the input");
    refused(ctx, at("models"), at("models/ft.safetensors"), "holding");
    refused(ctx, root, base_file, "contains the input");
    refused(ctx, at("models/base/merged"), base_dir, "inside the input");
    refused(ctx, at("link/merged"), base_dir, "inside the input");
    ck_assert_str_eq(read_text(base_file), "base");
    /* A sibling of a file input's directory is fine, and so is a new
     * directory beside a file input. */
    lm_output_dir *o;
    ck_assert_ok(begin(ctx, at("merged"), 0, base_dir, &o));
    lm_output_dir_destroy(o);
    ck_assert_ok(begin(ctx, at("models/merged"), 0,
                       at("models/ft.safetensors"), &o));
    lm_output_dir_destroy(o);
    ck_assert_int_eq(entries(at("models")), 2);
    lm_context_destroy(ctx);
}
END_TEST

/* The destination is checked again at commit: a directory that filled up
 * meanwhile is not overwritten without the option. */
START_TEST(commit_checks_again)
{
    lm_context *ctx = tu_context(1, 0);
    lm_output_dir *o;
    ck_assert_ok(begin(ctx, at("out"), 0, NULL, &o));
    ck_assert_int_eq(mkdir(at("out"), 0777), 0);
    write_text(at("out/theirs"), "theirs");
    ck_assert_status(lm_output_dir_commit(o), LM_ERR_EXISTS);
    lm_output_dir_destroy(o);
    ck_assert_str_eq(read_text(at("out/theirs")), "theirs");
    ck_assert_int_eq(entries(root), 1);
    lm_context_destroy(ctx);
}
END_TEST

START_TEST(bad_arguments)
{
    lm_context *ctx = tu_context(1, 0);
    lm_output_dir *o = NULL;
    ck_assert_status(lm_output_dir_begin(ctx, "", NULL, &o),
                     LM_ERR_INVALID_ARGUMENT);
    ck_assert_status(lm_output_dir_begin(ctx, "/", NULL, &o),
                     LM_ERR_INVALID_ARGUMENT);
    lm_output_dir_options opts = LM_OUTPUT_DIR_OPTIONS_INIT;
    opts.n_inputs = 1;
    ck_assert_status(lm_output_dir_begin(ctx, at("o"), &opts, &o),
                     LM_ERR_INVALID_ARGUMENT);
    opts.struct_size = 2;
    ck_assert_status(lm_output_dir_begin(ctx, at("o"), &opts, &o), LM_ERR_ABI);
    ck_assert_status(lm_output_dir_commit(NULL), LM_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(lm_output_dir_path(NULL));
    lm_output_dir_destroy(NULL);
    ck_assert_int_eq(entries(root), 0);
    lm_context_destroy(ctx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("output_dir");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, new_directory_appears_at_commit);
    tcase_add_test(tc, failure_leaves_nothing_not_even_parents);
    tcase_add_test(tc, empty_directory_is_replaced);
    tcase_add_test(tc, non_empty_refused_without_overwrite);
    tcase_add_test(tc, overwrite_replaces_the_whole_directory);
    tcase_add_test(tc, inputs_are_protected);
    tcase_add_test(tc, commit_checks_again);
    tcase_add_test(tc, bad_arguments);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return tu_run(suite());
}
