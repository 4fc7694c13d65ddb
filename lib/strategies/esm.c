/* `esm`: Essential Subspace Merging (Li et al., CVPR 2026), exact to the
 * released code's order of operations (its four scalings, inter_task,
 * eig_weighting, inter_dim and layer_scaling, default off because that
 * measured better: docs/methods/esm.md), with routing of tensors to the
 * essential-subspace merge (ESD), TSV-M or the mean, the global alpha, and
 * layer-level scaling among tensors of the same type (docs/methods/esm.md).
 * Layer scaling needs every layer's merged norm before any is final, so
 * with it on the strategy runs in two passes and keeps the merged matrices
 * of the scaled layers in memory between them; with it off (the default)
 * it declines the first pass (esm_passes). */
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/name_set.h"
#include "core/plan_private.h"
#include "libmerge/stats.h"
#include "linalg/linalg.h"
#include "strategies/esm.h"
#include "stats/lookup.h"

enum route { ROUTE_ESD, ROUTE_TSV, ROUTE_MEAN };

static const lm_param_desc esm_params[] = {
    {sizeof(lm_param_desc), "alpha", LM_PARAM_FLOAT, 1.0, 0.0, 10.0, NULL,
     "global scale (released code: searched on [0, 2])", 0},
    {sizeof(lm_param_desc), "norm_power", LM_PARAM_FLOAT, 2.0, 0.0, 10.0,
     NULL, "exponent p of the inter-task, input-column and layer scalings", 0},
    {sizeof(lm_param_desc), "eig_power", LM_PARAM_FLOAT, 0.15, 0.0, 10.0,
     NULL, "exponent of the eigenvalue weighting (lambda / mean)^p", 0},
    {sizeof(lm_param_desc), "rank", LM_PARAM_INT, 0.0, 0.0, 1e9, NULL,
     "directions kept per task; 0 = floor(d_out / T)", 0},
    {sizeof(lm_param_desc), "pad", LM_PARAM_CHOICE, 0, 0, 0,
     "complete|identity",
     "with fewer calibration rows than outputs: orthonormal completion, or "
     "the released code's identity columns", 0},
    {sizeof(lm_param_desc), "esd_route", LM_PARAM_CHOICE, 0, 0, 0,
     "auto|gram|output|randomized",
     "how each task's essential subspace is computed: the cheapest exact "
     "route within memory_budget (randomized if none fits), or forced", 0},
    {sizeof(lm_param_desc), "memory_budget", LM_PARAM_FLOAT, 0.0, 0.0, 1e6,
     NULL, "GiB an essential-subspace layer may take with everything it "
     "holds, times the threads (0: this machine's memory); estimated "
     "before the tensor is read", 0},
    {sizeof(lm_param_desc), "preset", LM_PARAM_CHOICE, 0, 0, 0,
     "generic|clip-vit", "tensor routing: any model, or the released ViT "
     "routing", 0},
    {sizeof(lm_param_desc), "inter_task", LM_PARAM_BOOL, 0.0, 0.0, 1.0, NULL,
     "scale task blocks by (||A_t|| / mean)^p (default off; the released "
     "code: on)", 0},
    {sizeof(lm_param_desc), "eig_weighting", LM_PARAM_BOOL, 0.0, 0.0, 1.0,
     NULL, "weight directions by (lambda / mean lambda)^eig_power (default "
     "off; the released code: on)", 0},
    {sizeof(lm_param_desc), "inter_dim", LM_PARAM_BOOL, 0.0, 0.0, 1.0, NULL,
     "scale input columns by (column norm / mean)^p (default off; the "
     "released code: on)", 0},
    {sizeof(lm_param_desc), "layer_scaling", LM_PARAM_BOOL, 0.0, 0.0, 1.0,
     NULL, "scale layers by (||dW|| / mean over the same type)^p (default "
     "off; the released code: on)", 0},
    {sizeof(lm_param_desc), "esd_pattern", LM_PARAM_STRING, 0, 0, 0, NULL,
     "regex: tensors merged in the essential subspace (need stats)", 0},
    {sizeof(lm_param_desc), "tsv_pattern", LM_PARAM_STRING, 0, 0, 0, NULL,
     "regex: 2-D tensors merged with TSV-M", 0},
    {sizeof(lm_param_desc), "mean_pattern", LM_PARAM_STRING, 0, 0, 0, NULL,
     "regex: tensors given the mean task vector", 0},
    {sizeof(lm_param_desc), "alpha_pattern", LM_PARAM_STRING, 0, 0, 0, NULL,
     "regex: tensors scaled by alpha (default: all; clip-vit: ESD ones)", 0},
    {sizeof(lm_param_desc), "layer_group", LM_PARAM_STRING, 0, 0, 0, NULL,
     "regex: its match in a name is the layer type for layer scaling "
     "(default: the name with layer indices removed)", 0},
    {sizeof(lm_param_desc), "combine", LM_PARAM_CHOICE, 0, 0, 0,
     "polar|spectral",
     "polar: P_cat's and A_cat's polar factors, each at its mean singular "
     "value, times 2 (released); spectral: the polar factors of P_cat and "
     "of A_cat with unit rows, A_cat's row norms kept as weights between "
     "them (TSV-M's form on ESM's essential basis)", 0},
    LM__WHITEN_PARAMS_RELEASED,
};

#define N_PATTERNS 5
enum { P_ESD, P_TSV, P_MEAN, P_ALPHA, P_GROUP };
static const char *const PATTERN_PARAMS[N_PATTERNS] = {
    "esd_pattern", "tsv_pattern", "mean_pattern", "alpha_pattern",
    "layer_group"};

/* The released ViT routing (esm_utils.py). */
static const char CLIP_ESD[] =
    "resblocks\\.[0-9]+\\.(attn\\.in_proj_weight|mlp\\.c_fc\\.weight|"
    "mlp\\.c_proj\\.weight)$";
static const char CLIP_SCALED[] =
    "(attn\\.in_proj_weight|attn\\.out_proj\\.weight|mlp\\.c_fc\\.weight|"
    "mlp\\.c_proj\\.weight)$";
static const char CLIP_MEAN[] = "(^|\\.)text_projection$";

struct cached {
    char *name;
    char *group;
    float *delta;
    size_t numel;
    double norm;
    double beta;
};

struct esm_state {
    lm_context *ctx;
    struct esm_opts o;
    double alpha;
    bool clip_vit, layer_scaling;
    regex_t re[N_PATTERNS];
    bool has_re[N_PATTERNS];
    regex_t clip_esd, clip_scaled, clip_mean;
    const lm_stats *stats;
    const lm_plan *plan; /* for user subspaces (lm_plan_subspace_find) */
    /* Ties of this execution (lm_plan_tie, shared storage): tie_alias[i]
     * is merged as tie_source[i]; names live in the plan's base. */
    const char **tie_source, **tie_alias;
    size_t n_ties;
    size_t n_models;
    int threads; /* tensors (or tasks) that may be in flight at once */
    pthread_mutex_t lock;
    struct cached *cache;
    size_t n_cache, cap_cache;
    struct lm__name_set cache_names; /* cache by tensor name */
};

static const char *cached_name(const void *table, size_t i)
{
    return ((const struct cached *)table)[i].name;
}

static const char *cached_group(const void *table, size_t i)
{
    return ((const struct cached *)table)[i].group;
}

static bool matches(const regex_t *re, const char *s)
{
    return regexec(re, s, 0, NULL, 0) == 0;
}

static void esm_fini(void *state, void *user)
{
    (void)user;
    struct esm_state *s = state;
    if (!s)
        return;
    for (int i = 0; i < N_PATTERNS; i++)
        if (s->has_re[i])
            regfree(&s->re[i]);
    regfree(&s->clip_esd);
    regfree(&s->clip_scaled);
    regfree(&s->clip_mean);
    for (size_t i = 0; i < s->n_cache; i++) {
        lm_free(s->ctx, s->cache[i].name);
        lm_free(s->ctx, s->cache[i].group);
        lm_free(s->ctx, s->cache[i].delta);
    }
    lm_free(s->ctx, s->cache);
    lm_free(s->ctx, s->tie_source);
    lm__name_set_free(s->ctx, &s->cache_names);
    pthread_mutex_destroy(&s->lock);
    lm_free(s->ctx, s);
}

/* memory_budget 0: the machine's physical memory. */
static double machine_memory(void)
{
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    if (pages > 0 && size > 0)
        return (double)pages * (double)size;
#endif
    return 16.0 * 1024.0 * 1024.0 * 1024.0; /* unknown: a common laptop */
}

/* A load-time merger without a base: the ties lm_plan_tie declares, each
 * alias to its root as the merger merges it. Ties found by shared storage
 * are found among the base's tensors, so without one a tensor whose
 * statistics an execution would route through such a tie is refused
 * rather than merged by another route (docs/methods/esm.md, "Tied
 * embeddings"). */
static lm_status load_ties_without_base(struct esm_state *s)
{
    const lm_plan *p = s->plan;
    for (size_t i = 0; s->stats && i < lm_stats_count(s->stats); i++) {
        const char *name = NULL;
        const char *other = lm_stats_at(s->stats, i, NULL, &name) == LM_OK
                                ? lm__ties_shared_in_models(p, name)
                                : NULL;
        if (other)
            return lm_context_set_error(
                s->ctx, LM_ERR_STATE,
                "esm: statistics are recorded under '%s', which shares "
                "storage with '%s' (a tie, found among the base's "
                "tensors): set the plan's base (lm_plan_set_base) or "
                "declare the tie (lm_plan_tie) before creating a merger",
                name, other);
    }
    if (!p->n_ties)
        return LM_OK;
    s->tie_source = lm__calloc(s->ctx, 2 * p->n_ties, sizeof(char *));
    if (!s->tie_source)
        return LM_ERR_OUT_OF_MEMORY;
    s->tie_alias = s->tie_source + p->n_ties;
    for (size_t t = 0; t < p->n_ties; t++) {
        s->tie_source[t] = lm__ties_declared_root(p, p->ties[t].alias);
        s->tie_alias[t] = p->ties[t].alias;
    }
    s->n_ties = p->n_ties;
    return LM_OK;
}

/* The plan's ties as (source, alias) name pairs, for statistics recorded
 * under an alias (a tied lm_head's, which libmerge.torch.collect_stats
 * hooks) to reach the tensor merged for both. */
static lm_status load_ties(struct esm_state *s)
{
    if (!s->plan)
        return LM_OK;
    if (!s->plan->base)
        return load_ties_without_base(s);
    const lm_model *base = s->plan->base;
    size_t *src = NULL;
    LM_TRY(lm__ties_resolve(s->plan, &src));
    size_t n = 0;
    for (size_t i = 0; i < base->count; i++)
        n += src[i] != SIZE_MAX;
    if (n) {
        s->tie_source = lm__calloc(s->ctx, 2 * n, sizeof(char *));
        if (!s->tie_source) {
            lm_free(s->ctx, src);
            return LM_ERR_OUT_OF_MEMORY;
        }
        s->tie_alias = s->tie_source + n;
        for (size_t i = 0; i < base->count; i++)
            if (src[i] != SIZE_MAX) {
                s->tie_source[s->n_ties] = base->entries[src[i]].name;
                s->tie_alias[s->n_ties++] = base->entries[i].name;
            }
    }
    lm_free(s->ctx, src);
    return LM_OK;
}

static lm_status esm_init(const lm_strategy_init_info *info, void **state,
                          void *user)
{
    (void)user;
    struct esm_state *s = lm__calloc(info->ctx, 1, sizeof(*s));
    if (!s)
        return LM_ERR_OUT_OF_MEMORY;
    s->ctx = info->ctx;
    s->stats = info->stats;
    s->plan = info->params ? info->params->plan : NULL;
    s->n_models = info->n_models;
    pthread_mutex_init(&s->lock, NULL);
    regcomp(&s->clip_esd, CLIP_ESD, REG_EXTENDED | REG_NOSUB);
    regcomp(&s->clip_scaled, CLIP_SCALED, REG_EXTENDED | REG_NOSUB);
    regcomp(&s->clip_mean, CLIP_MEAN, REG_EXTENDED | REG_NOSUB);
    const lm_params *p = info->params;
    const char *pad, *preset, *route;
    double budget = 0;
    int b[4];
    int64_t rank;
    lm_status st = lm_params_get_float(p, "alpha", &s->alpha);
    if (st == LM_OK)
        st = lm_params_get_float(p, "norm_power", &s->o.norm_power);
    if (st == LM_OK)
        st = lm_params_get_float(p, "eig_power", &s->o.eig_power);
    if (st == LM_OK)
        st = lm_params_get_int(p, "rank", &rank);
    if (st == LM_OK)
        st = lm_params_get_choice(p, "pad", &pad);
    if (st == LM_OK)
        st = lm_params_get_choice(p, "preset", &preset);
    if (st == LM_OK)
        st = lm_params_get_choice(p, "esd_route", &route);
    if (st == LM_OK)
        st = lm_params_get_float(p, "memory_budget", &budget);
    if (st == LM_OK)
        st = lm__whiten_get(p, &s->o.whiten, &s->o.floor_c);
    const char *combine = NULL;
    if (st == LM_OK)
        st = lm_params_get_choice(p, "combine", &combine);
    if (st == LM_OK)
        s->o.spectral = strcmp(combine, "spectral") == 0;
    static const char *const switches[4] = {"inter_task", "eig_weighting",
                                            "inter_dim", "layer_scaling"};
    for (int i = 0; st == LM_OK && i < 4; i++)
        st = lm_params_get_bool(p, switches[i], &b[i]);
    for (int i = 0; st == LM_OK && i < N_PATTERNS; i++) {
        const char *pat;
        st = lm_params_get_string(p, PATTERN_PARAMS[i], &pat);
        if (st == LM_OK && *pat) {
            if (regcomp(&s->re[i], pat, REG_EXTENDED) != 0)
                st = lm_context_set_error(info->ctx, LM_ERR_OUT_OF_RANGE,
                                          "esm: %s '%s' is not a valid "
                                          "POSIX extended regular "
                                          "expression", PATTERN_PARAMS[i],
                                          pat);
            else
                s->has_re[i] = true;
        }
    }
    if (st == LM_OK)
        st = load_ties(s);
    if (st != LM_OK) {
        esm_fini(s, NULL);
        return st;
    }
    s->o.rank = (size_t)rank;
    s->o.pad_identity = strcmp(pad, "identity") == 0;
    s->clip_vit = strcmp(preset, "clip-vit") == 0;
    s->o.route = strcmp(route, "gram") == 0         ? ESD_GRAM
                 : strcmp(route, "output") == 0     ? ESD_OUTPUT
                 : strcmp(route, "randomized") == 0 ? ESD_RANDOMIZED
                                                    : ESD_AUTO;
    s->o.budget_auto = budget == 0;
    s->o.budget = s->o.budget_auto ? machine_memory()
                                   : budget * 1024.0 * 1024.0 * 1024.0;
    s->threads = lm_context_threads(info->ctx);
    s->o.inter_task = b[0];
    s->o.eig_weighting = b[1];
    s->o.inter_dim = b[2];
    s->layer_scaling = b[3];
    *state = s;
    return LM_OK;
}

static bool is_matrix(const lm_tensor_job *job)
{
    return job->ndim == 2 && job->shape[0] >= 2 && job->shape[1] >= 2;
}

/* Task t's user subspace for this tensor (lm_plan_set_subspace), or
 * NULL. */
static const lm_projector *user_subspace(const struct esm_state *s,
                                         const lm_tensor_job *job, size_t t)
{
    const lm_projector *u = NULL;
    if (s->plan && lm_plan_subspace_find(s->plan, LM_SUBSPACE_ESM, job->name,
                                         t, &u) != LM_OK)
        u = NULL;
    return u;
}

/* Task t's statistics for tensor `name` with d_in columns: recorded
 * under its own name, else under a name tied to it (docs/methods/esm.md,
 * "Tied embeddings"): the merged matrix of a tied embedding/head pair is
 * the head's [vocab, hidden] Linear weight, whose inputs are the final
 * hidden states the head's statistics hold; the embedding's lookup has
 * no input second moment in that orientation. 0 when found. */
static int task_stats(const struct esm_state *s, size_t t, const char *name,
                      size_t d_in, const double **gram, uint64_t *n_rows)
{
    size_t d;
    if (!s->stats)
        return 1;
    if (!lm__stats_lookup(s->stats, t, name, gram, &d, n_rows) &&
        d == d_in && *n_rows > 0)
        return 0;
    for (size_t i = 0; i < s->n_ties; i++)
        if (!strcmp(s->tie_source[i], name) &&
            !lm__stats_lookup(s->stats, t, s->tie_alias[i], gram, &d,
                              n_rows) &&
            d == d_in && *n_rows > 0)
            return 0;
    return 1;
}

/* Can every task's essential subspace be had for this tensor: from the
 * user, or from statistics? */
static bool has_stats(const struct esm_state *s, const lm_tensor_job *job)
{
    if (!is_matrix(job))
        return false;
    for (size_t t = 0; t < job->n_models; t++) {
        const double *g;
        uint64_t n;
        if (user_subspace(s, job, t))
            continue;
        if (task_stats(s, t, job->name, (size_t)job->shape[1], &g, &n))
            return false;
    }
    return true;
}

static enum route route_of(const struct esm_state *s, const lm_tensor_job *job)
{
    const char *name = job->name;
    if (s->has_re[P_ESD] && matches(&s->re[P_ESD], name) && is_matrix(job))
        return ROUTE_ESD;
    if (s->has_re[P_MEAN] && matches(&s->re[P_MEAN], name))
        return ROUTE_MEAN;
    if (s->has_re[P_TSV] && matches(&s->re[P_TSV], name) && is_matrix(job))
        return ROUTE_TSV;
    if (s->clip_vit) {
        if (matches(&s->clip_esd, name) && is_matrix(job))
            return ROUTE_ESD;
        if (matches(&s->clip_mean, name) || !is_matrix(job))
            return ROUTE_MEAN;
        return ROUTE_TSV;
    }
    if (s->has_re[P_ESD] || !is_matrix(job))
        return is_matrix(job) ? ROUTE_TSV : ROUTE_MEAN;
    return has_stats(s, job) ? ROUTE_ESD : ROUTE_TSV;
}

static bool alpha_applies(const struct esm_state *s, const lm_tensor_job *job,
                          enum route r)
{
    if (s->has_re[P_ALPHA])
        return matches(&s->re[P_ALPHA], job->name);
    return s->clip_vit ? r == ROUTE_ESD : true;
}

/* The layer type for layer scaling into *group (caller frees), NULL if
 * the tensor is not scaled. Out of memory is a status of its own: taken
 * for "not scaled", it silently dropped the tensor's layer scaling. */
static lm_status layer_group(const struct esm_state *s,
                             const lm_tensor_job *job, enum route r,
                             char **group)
{
    *group = NULL;
    if (!s->layer_scaling || r == ROUTE_MEAN)
        return LM_OK;
    const char *name = job->name;
    if (s->has_re[P_GROUP]) {
        regmatch_t m;
        if (regexec(&s->re[P_GROUP], name, 1, &m, 0) != 0)
            return LM_OK;
        size_t len = (size_t)(m.rm_eo - m.rm_so);
        char *g = lm_alloc(s->ctx, len + 1);
        if (!g)
            return LM_ERR_OUT_OF_MEMORY;
        memcpy(g, name + m.rm_so, len);
        g[len] = '\0';
        *group = g;
        return LM_OK;
    }
    if (s->clip_vit && !matches(&s->clip_scaled, name))
        return LM_OK;
    /* Default: the name with every all-digit component replaced by '#'. */
    size_t n = strlen(name);
    char *g = lm_alloc(s->ctx, n + 1), *w = g;
    if (!g)
        return LM_ERR_OUT_OF_MEMORY;
    for (const char *c = name; *c;) {
        const char *end = strchr(c, '.');
        size_t len = end ? (size_t)(end - c) : strlen(c);
        bool digits = len > 0;
        for (size_t i = 0; i < len; i++)
            digits = digits && c[i] >= '0' && c[i] <= '9';
        if (digits)
            *w++ = '#';
        else {
            memcpy(w, c, len);
            w += len;
        }
        c += len;
        if (*c == '.')
            *w++ = *c++;
    }
    *w = '\0';
    *group = g;
    return LM_OK;
}

/* Each task's essential-subspace inputs for this tensor: its user
 * subspace (user[t]), or its statistics (grams[t], rows[t]). Errors name
 * the tensor and the task. */
static lm_status esd_inputs(const struct esm_state *s,
                            const lm_tensor_job *job, const double **grams,
                            uint64_t *rows, const lm_projector **user)
{
    lm_context *ctx = job->ctx;
    size_t T = job->n_models;
    size_t d_out = (size_t)job->shape[0], d_in = (size_t)job->shape[1];
    if (T > 256)
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "esm: at most 256 tasks");
    for (size_t t = 0; t < T; t++) {
        grams[t] = NULL;
        rows[t] = 0;
        if ((user[t] = user_subspace(s, job, t))) {
            if (lm_projector_dim(user[t]) != d_out)
                return lm_context_set_error(
                    ctx, LM_ERR_SHAPE,
                    "esm: tensor '%s' [%zu, %zu]: the user subspace of "
                    "task %zu has dimension %zu; an essential subspace "
                    "lies in the output space (dimension %zu)",
                    job->name, d_out, d_in, t, lm_projector_dim(user[t]),
                    d_out);
            continue;
        }
        if (task_stats(s, t, job->name, d_in, &grams[t], &rows[t]))
            return lm_context_set_error(
                ctx, LM_ERR_NOT_FOUND,
                "esm: tensor '%s' is routed to the essential subspace "
                "but task %zu has no activation statistics for it or a "
                "tensor tied to it (with d_in %zu and rows); observe its "
                "inputs with "
                "lm_stats_observe or give it a subspace with "
                "lm_plan_set_subspace", job->name, t, d_in);
    }
    return LM_OK;
}

/* What an essential-subspace tensor holds besides the layer merge: the
 * library's bytes, the merged f64 result (esm_merge / esm_prepare) and,
 * when layer-scaled, its f32 copy kept between the passes. */
static struct esm_mem esd_mem(const struct esm_state *s,
                              const lm_tensor_job *job, bool scaled)
{
    double n = (double)job->numel;
    return (struct esm_mem){(double)job->held_bytes,
                            n * (sizeof(double) + (scaled ? sizeof(float)
                                                          : 0)),
                            s->threads};
}

/* The merged task vector of one tensor (before alpha and layer scaling),
 * in f64. scaled: the tensor is layer-scaled (its estimate counts the
 * f32 copy kept between the passes). */
static lm_status merge_route(const struct esm_state *s,
                             const lm_tensor_job *job, enum route r,
                             bool scaled, double *out)
{
    lm_context *ctx = job->ctx;
    size_t T = job->n_models, n = job->numel;
    if (r == ROUTE_MEAN) {
        double wsum = 0;
        for (size_t t = 0; t < T; t++)
            wsum += job->weights[t];
        for (size_t i = 0; i < n; i++) {
            double acc = 0;
            for (size_t t = 0; t < T; t++)
                acc += job->weights[t] * (double)job->deltas[t][i];
            out[i] = wsum != 0 ? acc / wsum : 0.0;
        }
        return LM_OK;
    }
    size_t d_out = (size_t)job->shape[0], d_in = (size_t)job->shape[1];
    if (r == ROUTE_TSV) {
        double *x = lm__weighted_tasks(job);
        if (!x)
            return LM_ERR_OUT_OF_MEMORY;
        lm_status st = lm__tsv_merge(job, x, d_out, d_in, s->o.whiten,
                                     s->o.floor_c, out);
        lm_free(ctx, x);
        return st;
    }
    const double *grams[256];
    uint64_t rows[256];
    const lm_projector *user[256];
    double rho[256];
    LM_TRY(esd_inputs(s, job, grams, rows, user));
    for (size_t t = 0; t < T; t++)
        rho[t] = s->o.whiten == LM_WHITEN_RANK_AWARE
                     ? s->o.floor_c * lm__input_precision(job->base,
                                                          job->deltas[t],
                                                          job->numel)
                     : 0.0;
    struct esm_mem mem = esd_mem(s, job, scaled);
    return lm__esm_layer(ctx, &s->o, &mem, job->name, job->seed, job->deltas,
                         job->weights, grams, rows, user, rho, T, d_out, d_in,
                         out);
}

static double frobenius(const double *x, size_t n)
{
    double s2 = 0;
    for (size_t i = 0; i < n; i++)
        s2 += x[i] * x[i];
    return sqrt(s2);
}

static lm_status name_error(lm_context *ctx, lm_status st, const char *name)
{
    if (st == LM_ERR_OUT_OF_MEMORY)
        return lm_context_set_error(ctx, st, "esm: out of memory merging "
                                             "'%s'", name);
    if (!strstr(lm_context_error(ctx), name)) {
        char msg[LM_ERROR_CAPACITY];
        lm_context_copy_error(ctx, msg, sizeof(msg));
        lm_context_set_error(ctx, st, "esm: tensor '%s': %s", name, msg);
    }
    return st;
}

/* Only layer scaling needs other tensors (its betas compare a tensor's
 * norm with its layer type's mean): without it no tensor has a group, the
 * prepare pass would merge nothing, and declining it saves a read of every
 * input and lets a load-time merger work without a base. */
static unsigned esm_passes(void *state, void *user)
{
    (void)user;
    const struct esm_state *s = state;
    return s->layer_scaling ? 1 : 0;
}

/* Pass 1: merge every layer-scaled tensor and remember it with its norm. */
static lm_status esm_prepare(void *state, const lm_tensor_job *job,
                             void *user)
{
    (void)user;
    struct esm_state *s = state;
    enum route r = route_of(s, job);
    char *group = NULL;
    lm_status gst = layer_group(s, job, r, &group);
    if (gst != LM_OK)
        return name_error(job->ctx, gst, job->name);
    if (!group)
        return LM_OK;
    double *d = lm__calloc(job->ctx, job->numel, sizeof(double));
    float *f = lm__calloc(job->ctx, job->numel, sizeof(float));
    char *name = lm__strdup(job->ctx, job->name);
    lm_status st = d && f && name ? merge_route(s, job, r, true, d)
                                  : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK) {
        lm__f64_to_f32(d, f, job->numel);
        pthread_mutex_lock(&s->lock);
        struct cached *room = lm__reserve(job->ctx, s->cache, &s->cap_cache,
                                          s->n_cache, sizeof(*s->cache), 64);
        if (room) {
            s->cache = room;
            s->cache[s->n_cache] = (struct cached){
                name, group, f, job->numel, frobenius(d, job->numel), 1.0};
            st = lm__name_set_add(job->ctx, &s->cache_names, s->n_cache,
                                  cached_name, s->cache);
        } else {
            st = LM_ERR_OUT_OF_MEMORY;
        }
        if (st == LM_OK) {
            s->n_cache++;
            name = NULL;
            group = NULL;
            f = NULL;
        }
        pthread_mutex_unlock(&s->lock);
    }
    lm_free(job->ctx, d);
    lm_free(job->ctx, f);
    lm_free(job->ctx, name);
    lm_free(job->ctx, group);
    return st == LM_OK ? LM_OK : name_error(job->ctx, st, job->name);
}

/* Between passes: beta = (norm / mean norm of the same type)^p. */
static lm_status esm_prepared(void *state, void *user)
{
    (void)user;
    struct esm_state *s = state;
    /* Each group's sum and count sit at its first member's index. */
    struct lm__name_set groups = {0};
    size_t *first = lm__calloc(s->ctx, s->n_cache ? 2 * s->n_cache : 1,
                               sizeof(size_t));
    double *sum = lm__calloc(s->ctx, s->n_cache ? s->n_cache : 1,
                             sizeof(double));
    lm_status st = first && sum ? LM_OK : LM_ERR_OUT_OF_MEMORY;
    size_t *count = first ? first + s->n_cache : NULL;
    for (size_t i = 0; st == LM_OK && i < s->n_cache; i++) {
        size_t g = lm__name_set_find(&groups, s->cache[i].group, cached_group,
                                     s->cache);
        if (g == SIZE_MAX) {
            g = i;
            st = lm__name_set_add(s->ctx, &groups, i, cached_group, s->cache);
        }
        first[i] = g;
        sum[g] += s->cache[i].norm;
        count[g]++;
    }
    for (size_t i = 0; st == LM_OK && i < s->n_cache; i++) {
        double mean = sum[first[i]] / (double)count[first[i]];
        s->cache[i].beta =
            mean > 0 ? pow(s->cache[i].norm / mean, s->o.norm_power) : 1.0;
    }
    lm__name_set_free(s->ctx, &groups);
    lm_free(s->ctx, first);
    lm_free(s->ctx, sum);
    return st == LM_OK ? LM_OK
                       : lm_context_set_error(s->ctx, st,
                                              "esm: out of memory scaling "
                                              "layer groups");
}

static const struct cached *find_cached(const struct esm_state *s,
                                        const char *name)
{
    size_t i = lm__name_set_find(&s->cache_names, name, cached_name,
                                 s->cache);
    return i == SIZE_MAX ? NULL : &s->cache[i];
}

static lm_status esm_merge(void *state, const lm_tensor_job *job, void *user)
{
    (void)user;
    const struct esm_state *s = state;
    enum route r = route_of(s, job);
    double coef = alpha_applies(s, job, r) ? s->alpha : 1.0;
    const struct cached *c = find_cached(s, job->name);
    if (c) {
        for (size_t i = 0; i < job->numel; i++)
            job->out[i] = (float)(coef * c->beta * (double)c->delta[i]);
        return LM_OK;
    }
    double *d = lm__calloc(job->ctx, job->numel ? job->numel : 1,
                           sizeof(double));
    lm_status st = d ? merge_route(s, job, r, false, d) : LM_ERR_OUT_OF_MEMORY;
    if (st == LM_OK)
        for (size_t i = 0; i < job->numel; i++)
            job->out[i] = (float)(coef * d[i]);
    lm_free(job->ctx, d);
    return st == LM_OK ? LM_OK : name_error(job->ctx, st, job->name);
}

/* Before the library reads the tensor: an essential-subspace tensor's
 * whole estimate against memory_budget (lm__esm_layer_check), from shapes
 * and statistics alone. Other routes are not estimated. */
static lm_status esm_check(void *state, const lm_tensor_job *job, void *user)
{
    (void)user;
    const struct esm_state *s = state;
    enum route r = route_of(s, job);
    /* Pass-agnostic (the cache is not read: prepare_tensor may be growing
     * it): a layer-scaled tensor is estimated as its prepare pass. */
    if (r != ROUTE_ESD)
        return LM_OK;
    char *group = NULL;
    lm_status st = layer_group(s, job, r, &group);
    bool scaled = group != NULL;
    lm_free(job->ctx, group);
    const double *grams[256];
    uint64_t rows[256];
    const lm_projector *users[256];
    if (st == LM_OK)
        st = esd_inputs(s, job, grams, rows, users);
    struct esm_mem mem = esd_mem(s, job, scaled);
    enum esm_route route;
    if (st == LM_OK)
        st = lm__esm_layer_check(job->ctx, &s->o, &mem, job->name, rows,
                                 users, job->n_models,
                                 (size_t)job->shape[0], (size_t)job->shape[1],
                                 &route);
    return st == LM_OK ? LM_OK : name_error(job->ctx, st, job->name);
}

const lm_strategy_vtable lm__esm_strategy = {
    .struct_size = sizeof(lm_strategy_vtable),
    .abi_version = LM_STRATEGY_ABI_VERSION,
    .name = "esm",
    .description = "Essential Subspace Merging: PCA of each task's output "
                   "shift, projection, whitening, polarized scaling",
    .params = esm_params,
    .n_params = sizeof(esm_params) / sizeof(esm_params[0]),
    .init = esm_init,
    .merge_tensor = esm_merge,
    .fini = esm_fini,
    .prepare_tensor = esm_prepare,
    .prepared = esm_prepared,
    .prepare_passes = esm_passes,
    .check_tensor = esm_check,
};
