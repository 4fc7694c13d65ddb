/* mergekit's merge methods (mergekit/merge_methods/registry.py and the
 * files it lists, github.com/arcee-ai/mergekit) mapped onto libmerge
 * strategies. The parameter lists and defaults are mergekit's
 * (parameters() and tensor_parameters() of each method); libmerge's own
 * strategies keep their paper defaults, so every mergekit default is set
 * explicitly by the config reader. */
#include "mergekit_methods.h"

#include <stdio.h>
#include <string.h>

#define GTA_GLOBAL(norm, resc)                                              \
    {"int8_mask", false, "false", false}, {"normalize", false, norm, false}, \
        {"rescale", false, resc, false}, {"lambda", false, "1.0", false}
#define GTA_TENSOR                                                          \
    {"weight", true, NULL, true}, { "density", true, "1.0", false }
#define END {NULL, false, NULL, false}

static const struct lmerge_mk_param p_linear[] = {
    {"normalize", false, "true", false}, {"weight", true, NULL, true}, END};
static const struct lmerge_mk_param p_ta[] = {GTA_GLOBAL("false", "false"),
                                              GTA_TENSOR, END};
/* `scope` is libmerge's (mergekit trims per tensor, its default here):
 * `model` trims over the whole model as the TIES paper's code does. */
static const struct lmerge_mk_param p_ties[] = {
    GTA_GLOBAL("true", "false"), GTA_TENSOR, {"scope", false, NULL, false},
    END};
static const struct lmerge_mk_param p_dare_ties[] = {
    GTA_GLOBAL("false", "true"), GTA_TENSOR, END};
static const struct lmerge_mk_param p_dare_linear[] = {
    GTA_GLOBAL("false", "true"), GTA_TENSOR, END};
static const struct lmerge_mk_param p_breadcrumbs[] = {
    GTA_GLOBAL("false", "false"), GTA_TENSOR, {"gamma", true, "0.01", false},
    END};
static const struct lmerge_mk_param p_della[] = {
    GTA_GLOBAL("true", "true"), GTA_TENSOR, {"epsilon", true, "0.15", false},
    END};
static const struct lmerge_mk_param p_della_linear[] = {
    GTA_GLOBAL("false", "true"), GTA_TENSOR, {"epsilon", true, "0.15", false},
    END};
static const struct lmerge_mk_param p_sce[] = {
    {"int8_mask", false, "false", false}, {"select_topk", false, "1.0", false},
    END};
static const struct lmerge_mk_param p_ram[] = {
    {"epsilon", false, "1e-5", false}, END};
static const struct lmerge_mk_param p_ramplus[] = {
    {"r", false, "0.1", false}, {"alpha", false, "0.2", false},
    {"epsilon", false, "1e-5", false}, END};
static const struct lmerge_mk_param p_slerp[] = {{"t", false, NULL, true},
                                                 END};
static const struct lmerge_mk_param p_nuslerp[] = {
    {"nuslerp_row_wise", false, "false", false},
    {"nuslerp_flatten", false, "true", false}, {"weight", true, NULL, true},
    END};
static const struct lmerge_mk_param p_multislerp[] = {
    {"normalize_weights", false, "true", false}, {"eps", false, "1e-8", false},
    {"weight", true, NULL, true}, END};
static const struct lmerge_mk_param p_karcher[] = {
    {"max_iter", false, "10", false}, {"tol", false, "1e-5", false}, END};
static const struct lmerge_mk_param p_model_stock[] = {
    {"filter_wise", false, "false", false}, END};
static const struct lmerge_mk_param p_nearswap[] = {{"t", false, NULL, true},
                                                    END};
static const struct lmerge_mk_param p_none[] = {END};
static const struct lmerge_mk_param p_passthrough[] = {
    {"scale", true, NULL, false}, END};

static const struct lmerge_method methods[] = {
    {"linear", "linear", "average", LMERGE_BASE_MEMBER, p_linear, NULL, 1, 0,
     true, NULL},
    {"task_arithmetic", "task_arithmetic", NULL, LMERGE_BASE_REFERENCE, p_ta,
     NULL, 1, 0, true, NULL},
    {"ties", "ties", NULL, LMERGE_BASE_REFERENCE, p_ties,
     "consensus=sum;weights_in_election=true", 1, 0, true, NULL},
    {"dare_ties", "dare_ties", NULL, LMERGE_BASE_REFERENCE, p_dare_ties,
     "consensus=sum;weights_in_election=true;rescale_mode=l1", 1, 0, true, NULL},
    {"dare_linear", "dare_linear", NULL, LMERGE_BASE_REFERENCE, p_dare_linear,
     "rescale_mode=l1", 1, 0, true, NULL},
    {"breadcrumbs", "breadcrumbs", NULL, LMERGE_BASE_REFERENCE, p_breadcrumbs,
     NULL, 1, 0, true, NULL},
    {"breadcrumbs_ties", "breadcrumbs_ties", NULL, LMERGE_BASE_REFERENCE,
     p_breadcrumbs, NULL, 1, 0, true, NULL},
    {"della", "della", NULL, LMERGE_BASE_REFERENCE, p_della, NULL, 1, 0, true, NULL},
    {"della_linear", "della_linear", NULL, LMERGE_BASE_REFERENCE,
     p_della_linear, NULL, 1, 0, true, NULL},
    {"sce", "sce", NULL, LMERGE_BASE_REFERENCE, p_sce, NULL, 1, 0, true, NULL},
    {"ram", "ram", NULL, LMERGE_BASE_REFERENCE, p_ram, NULL, 1, 0, true, NULL},
    {"ramplus_tl", "ramplus_tl", NULL, LMERGE_BASE_REFERENCE, p_ramplus, NULL,
     1, 0, true, NULL},
    {"slerp", "slerp", NULL, LMERGE_BASE_REFERENCE, p_slerp, NULL, 1, 1, true, NULL},
    /* Without base_model mergekit interpolates the models themselves. */
    {"nuslerp", "nuslerp", NULL, LMERGE_BASE_REFERENCE, p_nuslerp, NULL, 1, 0,
     true, "with_base=false"},
    {"multislerp", "multislerp", NULL, LMERGE_BASE_REFERENCE, p_multislerp,
     NULL, 1, 0, true, "with_base=false"},
    {"karcher", "karcher", NULL, LMERGE_BASE_MEMBER, p_karcher, NULL, 1, 0,
     true, NULL},
    {"model_stock", "model_stock", NULL, LMERGE_BASE_REFERENCE, p_model_stock,
     NULL, 2, 0, true, NULL},
    {"nearswap", "nearswap", NULL, LMERGE_BASE_REFERENCE, p_nearswap, NULL, 1,
     1, true, NULL},
    {"arcee_fusion", "arcee_fusion", NULL, LMERGE_BASE_REFERENCE, p_none, NULL,
     1, 1, true, NULL},
    /* Without the passthrough strategy: `average` of the one model on itself
     * as base is that model's tensor exactly (base + 0). */
    {"passthrough", "passthrough", "average", LMERGE_BASE_MEMBER, p_passthrough,
     NULL, 1, 1, true, NULL},
};

static const struct lmerge_mk_param p_libmerge[] = {
    {"weight", true, "1.0", false}, END};

const struct lmerge_method *lmerge_method_find(const char *name,
                                               struct lmerge_method *scratch)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
        if (!strcmp(methods[i].name, name))
            return &methods[i];
    /* A libmerge strategy (average, esm, tsv, ...): `weight` per model
     * (default 1, as lmerge has always read it), the rest merge-wide. */
    memset(scratch, 0, sizeof(*scratch));
    scratch->name = name;
    scratch->strategy = name;
    scratch->role = LMERGE_BASE_LIBMERGE;
    scratch->params = p_libmerge;
    scratch->min_models = 1;
    return scratch;
}

const struct lmerge_method *lmerge_method_without_base(
    const struct lmerge_method *m, struct lmerge_method *scratch)
{
    if (!m->without_base)
        return m;
    *scratch = *m;
    scratch->role = LMERGE_BASE_MEMBER;
    scratch->fixed = m->without_base;
    return scratch;
}

const struct lmerge_mk_param *lmerge_method_param(
    const struct lmerge_method *m, const char *name)
{
    for (const struct lmerge_mk_param *p = m->params; p->name; p++)
        if (!strcmp(p->name, name))
            return p;
    return NULL;
}

static bool is(const struct lmerge_method *m, const char *name)
{
    return m->mergekit && !strcmp(m->name, name);
}

bool lmerge_mk_text_param(const struct lmerge_method *m, const char *name)
{
    return is(m, "ties") && !strcmp(name, "scope");
}

int lmerge_mk_translate(const struct lmerge_method *m, const char *name,
                        double value, const char **lib_name,
                        const char **lib_text, double *lib_value, char *err,
                        size_t err_size)
{
    *lib_name = name;
    *lib_text = NULL;
    *lib_value = value;
    (void)err;
    (void)err_size;
    if (!m->mergekit)
        return 0;
    /* int8_mask only picks the dtype of mergekit's sign mask: the same
     * numbers either way. */
    if (!strcmp(name, "int8_mask"))
        return 1;
    /* task_arithmetic sparsifies nothing: density and rescale have no
     * effect in mergekit either. */
    if (is(m, "task_arithmetic") &&
        (!strcmp(name, "density") || !strcmp(name, "rescale")))
        return 1;
    /* ties / dare_ties: mergekit's normalize divides the agreeing sum by
     * the agreeing weights, or not at all. */
    if ((is(m, "ties") || is(m, "dare_ties")) && !strcmp(name, "normalize")) {
        *lib_name = "divide";
        *lib_text = value != 0.0 ? "weights" : "none";
        return 0;
    }
    return 0;
}
