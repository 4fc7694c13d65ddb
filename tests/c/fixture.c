/* Text fixture reader (format: tests/fixtures/gen_strategy_fixtures.py). */
#include "fixture.h"

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* Whitespace-separated tokens of a whole file read into memory; '#' starts
 * a comment up to the end of the line. Tokens point into buf. */
struct lexer {
    const char *path;
    char *buf, *at;
};

static void lex_open(struct lexer *lx, const char *path)
{
    tu_check(path != NULL, "no fixture path");
    FILE *f = fopen(path, "rb");
    tu_check(f != NULL, "cannot open fixture %s", path);
    tu_check(fseek(f, 0, SEEK_END) == 0, "seeking in %s", path);
    long n = ftell(f);
    tu_check(n >= 0 && fseek(f, 0, SEEK_SET) == 0, "seeking in %s", path);
    lx->buf = malloc((size_t)n + 1);
    tu_check(lx->buf != NULL, "out of memory reading %s", path);
    tu_check(fread(lx->buf, 1, (size_t)n, f) == (size_t)n, "reading %s",
                  path);
    fclose(f);
    lx->buf[n] = '\0';
    lx->at = lx->buf;
    lx->path = path;
}

static void lex_close(struct lexer *lx)
{
    free(lx->buf);
    lx->buf = lx->at = NULL;
}

/* The next token, or NULL at the end of the file. */
static char *lex_next(struct lexer *lx)
{
    for (;;) {
        lx->at += strspn(lx->at, " \t\r\n");
        if (*lx->at != '#')
            break;
        lx->at += strcspn(lx->at, "\n");
    }
    if (*lx->at == '\0')
        return NULL;
    char *tok = lx->at;
    lx->at += strcspn(lx->at, " \t\r\n");
    if (*lx->at != '\0')
        *lx->at++ = '\0';
    return tok;
}

static char *lex_word(struct lexer *lx, const char *what)
{
    char *tok = lex_next(lx);
    tu_check(tok != NULL, "%s: file ends before %s", lx->path, what);
    return tok;
}

static void lex_expect(struct lexer *lx, const char *want)
{
    char *tok = lex_word(lx, want);
    tu_check(strcmp(tok, want) == 0, "%s: '%s' where '%s' was expected",
                  lx->path, tok, want);
}

static double lex_double(struct lexer *lx, const char *what)
{
    char *tok = lex_word(lx, what), *end;
    errno = 0;
    double v = strtod(tok, &end);
    tu_check(*end == '\0' && errno == 0, "%s: '%s' is not a number (%s)",
                  lx->path, tok, what);
    return v;
}

/* f32 values are written with 9 significant digits, which strtof maps back
 * to the exact float. */
static float lex_float(struct lexer *lx, const char *what)
{
    char *tok = lex_word(lx, what), *end;
    errno = 0;
    float v = strtof(tok, &end);
    tu_check(*end == '\0' && errno == 0, "%s: '%s' is not a float (%s)",
                  lx->path, tok, what);
    return v;
}

static size_t lex_size(struct lexer *lx, const char *what)
{
    char *tok = lex_word(lx, what), *end;
    errno = 0;
    unsigned long long v = strtoull(tok, &end, 10);
    tu_check(*end == '\0' && errno == 0 && tok[0] != '-' &&
                      v <= 100000000ULL,
                  "%s: '%s' is not a count (%s)", lx->path, tok, what);
    return (size_t)v;
}

static void *grow(void *p, size_t n, size_t size)
{
    p = realloc(p, n * size);
    tu_check(p != NULL, "out of memory");
    return p;
}

static void *alloc_array(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    tu_check(p != NULL, "out of memory");
    return p;
}

static char *dup(const char *s)
{
    char *d = strdup(s);
    tu_check(d != NULL, "out of memory");
    return d;
}

char *fx_path(const char *dir, const char *file)
{
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = malloc(n);
    if (p) /* no ck_assert: main() calls this before any test */
        snprintf(p, n, "%s/%s", dir, file);
    return p;
}

static void read_tensor(struct lexer *lx, fx_inputs *in)
{
    in->tensors = grow(in->tensors, in->n_tensors + 1, sizeof(fx_tensor));
    fx_tensor *t = &in->tensors[in->n_tensors++];
    t->name = dup(lex_word(lx, "tensor name"));
    t->ndim = (int)lex_size(lx, "ndim");
    tu_check(t->ndim <= FX_MAX_DIMS, "%s: %s has %d dims", lx->path,
                  t->name, t->ndim);
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        t->shape[d] = (int64_t)lex_size(lx, "dimension");
        t->numel *= (size_t)t->shape[d];
    }
    t->values = alloc_array(in->n_models * t->numel, sizeof(float));
    for (size_t i = 0; i < in->n_models * t->numel; i++)
        t->values[i] = lex_float(lx, t->name);
}

static void read_rows(struct lexer *lx, fx_inputs *in)
{
    in->rows = grow(in->rows, in->n_rows + 1, sizeof(fx_rows));
    fx_rows *r = &in->rows[in->n_rows++];
    r->task = lex_size(lx, "task");
    r->name = dup(lex_word(lx, "rows name"));
    r->n_rows = lex_size(lx, "row count");
    r->d_in = lex_size(lx, "d_in");
    r->values = alloc_array(r->n_rows * r->d_in, sizeof(float));
    for (size_t i = 0; i < r->n_rows * r->d_in; i++)
        r->values[i] = lex_float(lx, r->name);
}

void fx_load_inputs(const char *path, fx_inputs *in)
{
    struct lexer lx;
    memset(in, 0, sizeof(*in));
    lex_open(&lx, path);
    lex_expect(&lx, "libmerge-fixture");
    lex_expect(&lx, "1");
    lex_expect(&lx, "inputs");
    lex_expect(&lx, "models");
    in->n_models = lex_size(&lx, "model count");
    tu_check(in->n_models >= 2, "%s: no task models", path);
    for (;;) {
        char *kw = lex_word(&lx, "end");
        if (strcmp(kw, "end") == 0)
            break;
        if (strcmp(kw, "tensor") == 0)
            read_tensor(&lx, in);
        else if (strcmp(kw, "rows") == 0)
            read_rows(&lx, in);
        else
            ck_abort_msg("%s: unknown keyword '%s'", path, kw);
    }
    tu_check(lex_next(&lx) == NULL, "%s: text after 'end'", path);
    lex_close(&lx);
}

static void read_expect(struct lexer *lx, fx_case *c)
{
    c->expect = grow(c->expect, c->n_expect + 1, sizeof(fx_expect));
    fx_expect *e = &c->expect[c->n_expect++];
    e->name = dup(lex_word(lx, "expect name"));
    e->numel = lex_size(lx, "numel");
    e->values = alloc_array(e->numel, sizeof(double));
    for (size_t i = 0; i < e->numel; i++)
        e->values[i] = lex_double(lx, e->name);
}

static void read_weights(struct lexer *lx, fx_case *c)
{
    c->n_weights = lex_size(lx, "weight count");
    c->weights = alloc_array(c->n_weights, sizeof(double));
    for (size_t i = 0; i < c->n_weights; i++)
        c->weights[i] = lex_double(lx, "weight");
}

void fx_load_case(const char *path, fx_case *c)
{
    struct lexer lx;
    memset(c, 0, sizeof(*c));
    lex_open(&lx, path);
    lex_expect(&lx, "libmerge-fixture");
    lex_expect(&lx, "1");
    lex_expect(&lx, "case");
    lex_expect(&lx, "method");
    c->method = dup(lex_word(&lx, "method"));
    lex_expect(&lx, "inputs");
    c->inputs = dup(lex_word(&lx, "inputs"));
    lex_expect(&lx, "seed");
    c->seed = lex_size(&lx, "seed");
    lex_expect(&lx, "weights");
    read_weights(&lx, c);
    for (;;) {
        char *kw = lex_word(&lx, "end");
        if (strcmp(kw, "end") == 0)
            break;
        if (strcmp(kw, "param") == 0 || strcmp(kw, "param_model") == 0) {
            c->params = grow(c->params, c->n_params + 1, sizeof(fx_param));
            int per_model = strcmp(kw, "param_model") == 0;
            fx_param *p = &c->params[c->n_params++];
            p->name = dup(lex_word(&lx, "param name"));
            p->model = per_model ? lex_size(&lx, "param model") : FX_ALL_MODELS;
            p->value = dup(lex_word(&lx, "param value"));
        } else if (strcmp(kw, "expect") == 0) {
            read_expect(&lx, c);
        } else {
            ck_abort_msg("%s: unknown keyword '%s'", path, kw);
        }
    }
    tu_check(lex_next(&lx) == NULL, "%s: text after 'end'", path);
    lex_close(&lx);
}

char **fx_load_names(const char *path, size_t *count)
{
    /* Runs in main(), before any Check test: no ck_assert here (Check
     * cannot report outside a test), so plain stdio and NULL on error. */
    FILE *f = path ? fopen(path, "r") : NULL;
    char line[512], **names = NULL;
    size_t n = 0;
    if (!f)
        return NULL;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "#")] = '\0';
        char *word = line + strspn(line, " \t\r\n");
        word[strcspn(word, " \t\r\n")] = '\0';
        if (*word == '\0')
            continue;
        char **more = realloc(names, (n + 1) * sizeof(char *));
        if (!more || !(more[n] = strdup(word))) {
            names = more ? more : names;
            fx_free_names(names, n);
            fclose(f);
            return NULL;
        }
        names = more;
        n++;
    }
    fclose(f);
    *count = n;
    return names;
}

void fx_free_inputs(fx_inputs *in)
{
    for (size_t i = 0; i < in->n_tensors; i++) {
        free(in->tensors[i].name);
        free(in->tensors[i].values);
    }
    for (size_t i = 0; i < in->n_rows; i++) {
        free(in->rows[i].name);
        free(in->rows[i].values);
    }
    free(in->tensors);
    free(in->rows);
    memset(in, 0, sizeof(*in));
}

void fx_free_case(fx_case *c)
{
    free(c->method);
    free(c->inputs);
    free(c->weights);
    for (size_t i = 0; i < c->n_params; i++) {
        free(c->params[i].name);
        free(c->params[i].value);
    }
    for (size_t i = 0; i < c->n_expect; i++) {
        free(c->expect[i].name);
        free(c->expect[i].values);
    }
    free(c->params);
    free(c->expect);
    memset(c, 0, sizeof(*c));
}

void fx_free_names(char **names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
}
