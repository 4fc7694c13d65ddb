/* Output side files as mergekit writes them (see out_files.h). */
#include "out_files.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "io/regular_file.h"

static int write_text(const char *dir, const char *name, const char *text,
                      char *err, size_t err_size)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    size_t n = strlen(text), off = 0;
    while (fd >= 0 && off < n) {
        ssize_t w = write(fd, text + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    int saved = errno;
    if (fd >= 0 && close(fd) && off == n) {
        saved = errno;
        off = 0;
    }
    if (fd < 0 || off != n) {
        snprintf(err, err_size, "cannot write '%s': %s", path,
                 strerror(saved));
        return -1;
    }
    return 0;
}

static char *read_small(const char *path)
{
    struct stat st;
    const char *kind;
    int fd = lm__open_regular(path, &st, &kind);
    if (fd < 0)
        return NULL;
    char *buf = st.st_size < (64 << 20) ? malloc((size_t)st.st_size + 1) : NULL;
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (buf)
        buf[got] = '\0';
    return buf;
}

/* torch's spelling of a dtype (mergekit writes the config's string). */
static const char *torch_dtype(const char *d)
{
    if (!strncmp(d, "torch.", 6))
        d += 6;
    if (!strcmp(d, "f16") || !strcmp(d, "half"))
        return "float16";
    if (!strcmp(d, "bf16"))
        return "bfloat16";
    if (!strcmp(d, "f32") || !strcmp(d, "float"))
        return "float32";
    if (!strcmp(d, "f64") || !strcmp(d, "double"))
        return "float64";
    return d;
}

static void set_string(cJSON *o, const char *key, const char *v)
{
    cJSON *s = cJSON_CreateString(v);
    if (cJSON_GetObjectItemCaseSensitive(o, key))
        cJSON_ReplaceItemInObjectCaseSensitive(o, key, s);
    else
        cJSON_AddItemToObject(o, key, s);
}

/* The donor's config.json with torch_dtype and the layer count set. */
static int write_config_json(const char *donor_dir,
                             const struct lmerge_out_info *info,
                             const char *dir, char *err, size_t err_size)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/config.json", donor_dir);
    char *text = read_small(path);
    if (!text)
        return 0; /* no config.json to carry */
    if (!info->dtype && info->n_layers < 0) { /* nothing to change */
        int rc = write_text(dir, "config.json", text, err, err_size);
        free(text);
        return rc;
    }
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        snprintf(err, err_size, "'%s' is not a JSON object", path);
        return -1;
    }
    if (info->dtype) {
        set_string(root, "torch_dtype", torch_dtype(info->dtype));
        /* transformers 4.56+ writes "dtype"; keep both in step. */
        if (cJSON_GetObjectItemCaseSensitive(root, "dtype"))
            set_string(root, "dtype", torch_dtype(info->dtype));
    }
    if (info->n_layers >= 0) {
        static const char *keys[] = {"num_hidden_layers", "n_layer",
                                     "num_layers"};
        bool done = false;
        for (size_t i = 0; i < 3; i++) {
            cJSON *k = cJSON_GetObjectItemCaseSensitive(root, keys[i]);
            if (k && cJSON_IsNumber(k)) {
                cJSON_SetNumberValue(k, (double)info->n_layers);
                done = true;
            }
        }
        if (!done)
            cJSON_AddNumberToObject(root, "num_hidden_layers",
                                    (double)info->n_layers);
    }
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    if (!out) {
        snprintf(err, err_size, "out of memory writing config.json");
        return -1;
    }
    size_t n = strlen(out);
    char *nl = malloc(n + 2);
    int rc = -1;
    if (nl) {
        memcpy(nl, out, n);
        nl[n] = '\n';
        nl[n + 1] = '\0';
        rc = write_text(dir, "config.json", nl, err, err_size);
    } else {
        snprintf(err, err_size, "out of memory writing config.json");
    }
    free(nl);
    free(out);
    return rc;
}

/* Appends to a growing string; returns -1 when out of memory. */
struct buf {
    char *s;
    size_t n, cap;
};

static int put(struct buf *b, const char *fmt, const char *a, const char *c)
{
    int need = snprintf(NULL, 0, fmt, a, c);
    if (b->n + (size_t)need + 1 > b->cap) {
        size_t cap = (b->cap + (size_t)need + 1) * 2;
        char *s = realloc(b->s, cap);
        if (!s)
            return -1;
        b->s = s;
        b->cap = cap;
    }
    snprintf(b->s + b->n, b->cap - b->n, fmt, a, c);
    b->n += (size_t)need;
    return 0;
}

static bool listed(const char **seen, size_t n, const char *p)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(seen[i], p))
            return true;
    return false;
}

/* A model card in the shape of mergekit's (mergekit/card.py): method,
 * base, the models merged, the configuration. */
static int write_card(const struct lmerge_config *c,
                      const struct lmerge_out_info *info, const char *dir,
                      char *err, size_t err_size)
{
    struct buf b = {0};
    /* mergekit's card treats slerp's base as one of the models. */
    const char *base = c->base_model && strcmp(c->merge_method, "slerp")
                           ? c->base_model
                           : NULL;
    /* No directory name in it: the same merge gives the same files
     * wherever it is written. */
    int rc = put(&b, "---\nlibrary_name: transformers\ntags:\n- mergekit\n"
                     "- merge\n- libmerge\n---\n# %s%s\n\n",
                 "Merged model", "");
    rc = rc ? rc : put(&b, "This is a merge of pre-trained language models "
                           "created with libmerge's `lmerge run` from a "
                           "[mergekit](https://github.com/arcee-ai/mergekit) "
                           "configuration.\n\n## Merge Details\n### Merge "
                           "Method\n\nThis model was merged using the %s "
                           "merge method (libmerge strategy `%s`)",
                      c->merge_method, info->strategy);
    if (!rc && base)
        rc = put(&b, " using %s%s as a base", base, "");
    rc = rc ? rc : put(&b, ".\n\n### Models Merged\n\nThe following models "
                           "were included in the merge:\n%s%s", "", "");
    const char **seen = calloc(c->n_models + 64, sizeof(char *));
    size_t n_seen = 0;
    if (!seen)
        rc = -1;
    for (size_t i = 0; !rc && i < c->n_models; i++)
        if (!(base && !strcmp(c->models[i].path, base)) &&
            !listed(seen, n_seen, c->models[i].path)) {
            seen[n_seen++] = c->models[i].path;
            rc = put(&b, "* %s%s\n", c->models[i].path, "");
        }
    for (size_t s = 0; !rc && s < c->n_slices; s++)
        for (size_t k = 0; !rc && k < c->slices[s].n_sources; k++) {
            const char *p = c->slices[s].sources[k].path;
            if ((base && !strcmp(p, base)) || listed(seen, n_seen, p) ||
                n_seen >= c->n_models + 64)
                continue;
            seen[n_seen++] = p;
            rc = put(&b, "* %s%s\n", p, "");
        }
    free(seen);
    rc = rc ? rc : put(&b, "\n### Configuration\n\nThe following YAML "
                           "configuration was used to produce this model:\n"
                           "\n```yaml\n%s%s```\n", info->config_text,
                       info->config_text[0] &&
                               info->config_text[strlen(info->config_text) -
                                                 1] != '\n'
                           ? "\n"
                           : "");
    if (rc) {
        free(b.s);
        snprintf(err, err_size, "out of memory writing README.md");
        return -1;
    }
    rc = write_text(dir, "README.md", b.s, err, err_size);
    free(b.s);
    return rc;
}

int lmerge_write_out_files(const struct lmerge_config *c,
                           const struct lmerge_layout *l,
                           const struct lmerge_out_info *info, const char *dir,
                           char *err, size_t err_size)
{
    (void)l;
    struct stat st;
    bool donor_dir = info->donor && stat(info->donor, &st) == 0 &&
                     S_ISDIR(st.st_mode);
    if (info->copy_files && donor_dir) {
        if (lmerge_copy_side_files(info->donor, dir, err, err_size))
            return -1;
        if (write_config_json(info->donor, info, dir, err, err_size))
            return -1;
    }
    if (write_text(dir, "mergekit_config.yml", info->config_text, err,
                   err_size))
        return -1;
    return write_card(c, info, dir, err, err_size);
}
