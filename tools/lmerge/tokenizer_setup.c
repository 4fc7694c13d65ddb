/* Reading every model's tokenizer once (a path listed twice, such as a
 * base also under `models`, is one model, as in mergekit) and building the
 * plan. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

static int find_or_add(lmerge_tok_plan *p, const char *path, bool is_input,
                       size_t *out, char *err, size_t err_size)
{
    for (size_t m = 0; m < p->n_models; m++) {
        if (!strcmp(p->models[m].path, path)) {
            p->models[m].is_input |= is_input;
            *out = m;
            return 0;
        }
    }
    struct tok_model *mm = &p->models[p->n_models];
    mm->path = path;
    mm->is_input = is_input;
    int rc = tok_vocab_read(path, &mm->vocab, err, err_size);
    if (rc < 0)
        return -1;
    mm->has_vocab = rc == 0;
    mm->vocab_size = tok_config_int(path, "vocab_size", err, err_size);
    if (mm->vocab_size == -2) {
        tok_vocab_free(&mm->vocab);
        return -1;
    }
    *out = p->n_models++;
    return 0;
}

int lmerge_tokenizer_plan(const struct lmerge_tok_spec *spec,
                          const char *const *paths, size_t n_paths,
                          lmerge_tok_plan **out, char *err, size_t err_size)
{
    *out = NULL;
    lmerge_tok_plan *p = calloc(1, sizeof(*p));
    if (p) {
        p->models = calloc(n_paths + 1, sizeof(*p->models));
        p->unique_of = calloc(n_paths ? n_paths : 1, sizeof(size_t));
    }
    if (!p || !p->models || !p->unique_of) {
        lmerge_tokenizer_plan_free(p);
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    p->spec_copy = *spec;
    p->spec = &p->spec_copy;
    p->n_paths = n_paths;
    int rc = 0;
    for (size_t i = 0; i < n_paths && rc == 0; i++)
        rc = find_or_add(p, paths[i], true, &p->unique_of[i], err, err_size);
    bool named = spec->source && strcmp(spec->source, "union") &&
                 strcmp(spec->source, "base");
    size_t src;
    if (rc == 0 && named)
        rc = find_or_add(p, spec->source, false, &src, err, err_size);
    if (rc == 0 && spec->source && !p->models[0].has_vocab) {
        snprintf(err, err_size, "base_model: no tokenizer.json in '%s': "
                 "tokenizer merging needs the base's tokenizer", paths[0]);
        rc = -1;
    }
    if (rc == 0 && !spec->source && spec->chat_template &&
        !p->models[0].has_vocab) {
        snprintf(err, err_size, "line %d: chat_template: the base model "
                 "'%s' has no tokenizer.json to carry it",
                 spec->chat_template_line, paths[0]);
        rc = -1;
    }
    for (size_t m = 1; rc == 0 && spec->source && m < p->n_models; m++)
        if (p->models[m].is_input && !p->models[m].has_vocab)
            fprintf(stderr, "lmerge run: warning: no tokenizer.json in '%s'; "
                    "assuming the base's vocabulary (as mergekit does)\n",
                    p->models[m].path);
    if (rc == 0 && spec->source)
        rc = tok_build_vocab(p, err, err_size);
    if (rc == 0)
        rc = tok_resolve_chat_template(p, err, err_size);
    if (rc) {
        lmerge_tokenizer_plan_free(p);
        return -1;
    }
    *out = p;
    return 0;
}

int64_t lmerge_tokenizer_rows(const lmerge_tok_plan *p)
{
    return p ? p->n_rows : 0;
}

void lmerge_tokenizer_plan_free(lmerge_tok_plan *p)
{
    if (!p)
        return;
    for (size_t m = 0; p->models && m < p->n_models; m++) {
        tok_vocab_free(&p->models[m].vocab);
        free(p->models[m].perm);
    }
    free(p->models);
    free(p->unique_of);
    free(p->out_tokens);
    tok_map_free(&p->out_map);
    cJSON_Delete(p->out_json);
    cJSON_Delete(p->new_added);
    free(p->chat_template);
    free(p);
}
