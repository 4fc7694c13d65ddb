/* The SVD family's embedding rule (embedding.h). */
#include <string.h>

#include "strategies/embedding.h"

lm_status lm__embedding_rule_init(lm_context *ctx, const lm_params *params,
                                  const char *strategy,
                                  struct lm__embedding_rule *rule)
{
    memset(rule, 0, sizeof(*rule));
    const char *route, *pattern;
    LM_TRY(lm_params_get_choice(params, "embedding_route", &route));
    LM_TRY(lm_params_get_string(params, "embedding_pattern", &pattern));
    LM_TRY(lm_params_get_int(params, "embedding_rows", &rule->min_rows));
    rule->route = !strcmp(route, "mean")         ? LM_EMBEDDING_MEAN
                  : !strcmp(route, "randomized") ? LM_EMBEDDING_RANDOMIZED
                                                 : LM_EMBEDDING_SVD;
    /* Compiled even for the svd route, so that a bad pattern is reported
     * rather than ignored. */
    const char *re = pattern[0] ? pattern : LM__EMBEDDING_NAMES;
    int rc = regcomp(&rule->re, re, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char why[128];
        regerror(rc, &rule->re, why, sizeof(why));
        return lm_context_set_error(ctx, LM_ERR_INVALID_ARGUMENT,
                                    "%s: embedding_pattern '%s' is not a "
                                    "valid extended regex: %s", strategy, re,
                                    why);
    }
    rule->compiled = true;
    return LM_OK;
}

void lm__embedding_rule_free(struct lm__embedding_rule *rule)
{
    if (rule->compiled)
        regfree(&rule->re);
    rule->compiled = false;
}

enum lm__embedding_route lm__embedding_route_for(
    const struct lm__embedding_rule *rule, const lm_tensor_job *job)
{
    if (rule->route == LM_EMBEDDING_SVD || job->ndim != 2)
        return LM_EMBEDDING_SVD;
    bool by_rows = rule->min_rows > 0 && job->shape[0] >= rule->min_rows;
    bool by_name = rule->compiled &&
                   regexec(&rule->re, job->name, 0, NULL, 0) == 0;
    return by_rows || by_name ? rule->route : LM_EMBEDDING_SVD;
}
