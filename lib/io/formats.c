/* The format table (formats.h): one entry per format, built from the
 * readers and writers of lib/io. Detection lives in format_detect.c. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "io/atomic_file.h"
#include "io/formats.h"
#include "io/formats_read.h"
#include "io/gguf_format.h"
#include "io/paths.h"
#include "libmerge/gguf.h"
#include "libmerge/io.h"
#include "libmerge/npz.h"
#include "libmerge/peft.h"
#include "libmerge/safetensors.h"

/* The safetensors reader's limit on the header length: a larger first
 * word is not a safetensors file (it also keeps the GGUF magic and a zip
 * signature, read as a length, out: both are far larger). */
#define MAX_SAFETENSORS_HEADER ((uint64_t)100 * 1000 * 1000)

lm_status lm__format_dir_entry(lm_context *ctx, const char *dir,
                               const char *name, char **file)
{
    char *p = lm__path_join(ctx, dir, name);
    if (!p)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory opening '%s'", dir);
    struct stat st;
    if (stat(p, &st) != 0) {
        lm_free(ctx, p);
        return LM_ERR_NOT_FOUND;
    }
    *file = p;
    return LM_OK;
}

/* --- safetensors ------------------------------------------------------ */

static bool sniff_safetensors(const unsigned char *h, size_t n)
{
    if (n < 9 || h[8] != '{')
        return false;
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--)
        len = len << 8 | h[i];
    return len >= 2 && len <= MAX_SAFETENSORS_HEADER;
}

static lm_status safetensors_in_dir(lm_context *ctx, const char *dir,
                                    char **file)
{
    return lm__format_dir_entry(ctx, dir, "model.safetensors", file);
}

static lm_status index_in_dir(lm_context *ctx, const char *dir, char **file)
{
    return lm__format_dir_entry(ctx, dir, "model.safetensors.index.json",
                                file);
}

static lm_status safetensors_write(lm_context *ctx, const lm_model *model,
                                   const char *path, unsigned flags)
{
    (void)flags;
    return lm_safetensors_write(ctx, model, path, NULL);
}

/* Hugging Face transformers writes "format": "pt" and warns about files
 * without it, so merge outputs carry it unless the caller says otherwise. */
static lm_status safetensors_sink(lm_context *ctx, const char *path,
                                  const lm_model *like,
                                  const lm_safetensors_sink_options *opts,
                                  lm_file_sink **out)
{
    (void)like;
    lm_safetensors_sink_options o = *opts;
    for (size_t i = 0; i < o.n_metadata; i++)
        if (!strcmp(o.metadata_keys[i], "format"))
            return lm_safetensors_sink_create(ctx, path, &o, out);
    size_t n = o.n_metadata + 1;
    const char **keys = lm__calloc(ctx, n, sizeof(*keys));
    const char **values = lm__calloc(ctx, n, sizeof(*values));
    lm_status st = LM_ERR_OUT_OF_MEMORY;
    if (keys && values) {
        keys[0] = "format";
        values[0] = "pt";
        for (size_t i = 1; i < n; i++) {
            keys[i] = o.metadata_keys[i - 1];
            values[i] = o.metadata_values[i - 1];
        }
        o.metadata_keys = keys;
        o.metadata_values = values;
        o.n_metadata = n;
        st = lm_safetensors_sink_create(ctx, path, &o, out); /* copies */
    } else {
        lm_context_set_error(ctx, st, "out of memory creating a sink for "
                                      "'%s'", path);
    }
    lm_free(ctx, keys);
    lm_free(ctx, values);
    return st;
}

static const char *const safetensors_suffixes[] = {".safetensors", NULL};
static const struct lm__format safetensors = {
    "safetensors", safetensors_suffixes, sniff_safetensors,
    safetensors_in_dir, lm__safetensors_read_into, NULL, NULL,
    safetensors_write, safetensors_sink, "model.safetensors", true};

/* The index is JSON like any other, so it is known by its name only. */
static const char *const index_suffixes[] = {".index.json", NULL};
static const struct lm__format safetensors_index = {
    "safetensors index", index_suffixes, NULL, index_in_dir,
    lm__safetensors_index_read_into, NULL, NULL, NULL, NULL, NULL, false};

/* --- GGUF -------------------------------------------------------------- */

static bool sniff_gguf(const unsigned char *h, size_t n)
{
    return n >= 4 && !memcmp(h, "GGUF", 4);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* A directory with exactly one *.gguf: llama.cpp and Hugging Face
 * repositories ship one model file per directory. Several are ambiguous
 * (two quantisations, a model and its adapter): the caller must choose. */
static lm_status gguf_in_dir(lm_context *ctx, const char *dir, char **file)
{
    DIR *d = opendir(dir);
    if (!d)
        return LM_ERR_NOT_FOUND; /* the caller reports the directory */
    char first[256] = "", second[256] = "";
    size_t count = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!ends_with(e->d_name, ".gguf") || e->d_name[0] == '.')
            continue;
        count++;
        /* The two smallest names, so the message does not depend on the
         * order readdir returns. */
        if (!*first || strcmp(e->d_name, first) < 0) {
            snprintf(second, sizeof(second), "%s", first);
            snprintf(first, sizeof(first), "%s", e->d_name);
        } else if (!*second || strcmp(e->d_name, second) < 0) {
            snprintf(second, sizeof(second), "%s", e->d_name);
        }
    }
    closedir(d);
    if (count == 0)
        return LM_ERR_NOT_FOUND;
    if (count > 1)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "directory '%s' holds %zu .gguf files "
                                    "('%s', '%s'%s): name the one to open",
                                    dir, count, first, second,
                                    count > 2 ? ", ..." : "");
    lm_status st = lm__format_dir_entry(ctx, dir, first, file);
    if (st == LM_ERR_NOT_FOUND) /* removed since readdir: say which */
        return lm_context_set_error(ctx, LM_ERR_IO, "'%s/%s' vanished",
                                    dir, first);
    return st;
}

static bool gguf_model_is_lora(const lm_model *model)
{
    const char *type = NULL;
    return lm_model_metadata_find(model, "general.type", &type) == LM_OK &&
           !strcmp(type, "adapter");
}

static lm_status gguf_write(lm_context *ctx, const lm_model *model,
                            const char *path, unsigned flags)
{
    (void)flags;
    return lm_gguf_write(ctx, model, path, NULL);
}

static lm_status gguf_sink(lm_context *ctx, const char *path,
                           const lm_model *like,
                           const lm_safetensors_sink_options *opts,
                           lm_file_sink **out)
{
    lm_gguf_options o = LM_GGUF_OPTIONS_INIT;
    o.kv_from = like;
    o.metadata_keys = opts->metadata_keys;
    o.metadata_values = opts->metadata_values;
    o.n_metadata = opts->n_metadata;
    return lm_gguf_sink_create(ctx, path, &o, out);
}

static const char *const gguf_suffixes[] = {".gguf", NULL};
static const struct lm__format gguf = {
    "GGUF", gguf_suffixes, sniff_gguf, gguf_in_dir, lm__gguf_read_into,
    lm_gguf_read_lora, gguf_model_is_lora, gguf_write, gguf_sink,
    "model.gguf", false};

/* --- NumPy .npz -------------------------------------------------------- */

/* A zip archive: a local file header, or the end record of an empty one. */
static bool sniff_npz(const unsigned char *h, size_t n)
{
    return n >= 4 && (!memcmp(h, "PK\3\4", 4) || !memcmp(h, "PK\5\6", 4));
}

static lm_status npz_write(lm_context *ctx, const lm_model *model,
                           const char *path, unsigned flags)
{
    lm_npz_options o = LM_NPZ_OPTIONS_INIT;
    o.compress = (flags & LM_SAVE_COMPRESS) != 0;
    return lm_npz_write(ctx, model, path, &o);
}

static const char *const npz_suffixes[] = {".npz", NULL};
static const struct lm__format npz = {
    "npz", npz_suffixes, sniff_npz, NULL, lm__npz_read_into, NULL, NULL,
    npz_write, NULL, NULL, false};

/* --- PEFT LoRA adapter directory --------------------------------------- */

static lm_status peft_in_dir(lm_context *ctx, const char *dir, char **file)
{
    char *config = NULL;
    LM_TRY(lm__format_dir_entry(ctx, dir, "adapter_config.json", &config));
    lm_free(ctx, config);
    *file = lm__strdup(ctx, dir); /* the reader takes the directory */
    return *file ? LM_OK
                 : lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "out of memory opening '%s'", dir);
}

static const struct lm__format peft = {
    "PEFT adapter", NULL, NULL, peft_in_dir, NULL, lm_peft_read, NULL, NULL,
    NULL, NULL, false};

/* Precedence: a PEFT directory is an adapter even when it also holds a
 * model (lmerge has always read it so); an index wins over a
 * model.safetensors beside it; safetensors names win over a .gguf. */
const struct lm__format *const lm__formats[] = {
    &peft, &safetensors_index, &safetensors, &gguf, &npz, NULL};

const struct lm__format *lm__format_of_model(const lm_model *model)
{
    /* Only GGUF keeps something of its file in the model today (its
     * typed key/values, as the model's format attachment). */
    return lm__gguf_kv_of(model) ? &gguf : NULL;
}
