/* PEFT LoRA adapters: adapter_config.json + adapter_model.safetensors. */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/internal.h"
#include "io/input_file.h"
#include "io/json_check.h"
#include "io/json_oom.h"
#include "io/paths.h"
#include "libmerge/peft.h"
#include "libmerge/safetensors.h"

#define PREFIX "base_model.model."

struct peft_config {
    double r, alpha;
    bool rslora;
    bool fan_in_fan_out; /* targets store W as [in, out] (GPT-2 Conv1D) */
    const cJSON *rank_pattern, *alpha_pattern;
};

/* adapter_config.json files are a few KB. */
#define MAX_CONFIG ((size_t)1 << 26)

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static lm_status parse_config(lm_context *ctx, const char *path,
                              const cJSON *root, struct peft_config *c)
{
    if (!cJSON_IsObject(root))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: not a JSON object", path);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    if (type && (!cJSON_IsString(type) || strcmp(type->valuestring, "LORA")))
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "%s: peft_type %s is not LORA", path,
                                    cJSON_IsString(type) ? type->valuestring
                                                         : "(not a string)");
    const cJSON *dora = cJSON_GetObjectItemCaseSensitive(root, "use_dora");
    if (cJSON_IsTrue(dora))
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "%s: DoRA adapters (use_dora) are not "
                                    "supported", path);
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(root, "r");
    const cJSON *alpha = cJSON_GetObjectItemCaseSensitive(root, "lora_alpha");
    if (!cJSON_IsNumber(r) || r->valuedouble < 1 ||
        r->valuedouble != floor(r->valuedouble))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: \"r\" must be a positive integer",
                                    path);
    if (alpha && !cJSON_IsNumber(alpha))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: \"lora_alpha\" must be a number",
                                    path);
    c->r = r->valuedouble;
    c->alpha = alpha ? alpha->valuedouble : 8.0; /* PEFT's default */
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "use_rslora");
    if (rs && !cJSON_IsBool(rs))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: \"use_rslora\" must be a boolean",
                                    path);
    c->rslora = cJSON_IsTrue(rs);
    const cJSON *fifo = cJSON_GetObjectItemCaseSensitive(root,
                                                         "fan_in_fan_out");
    if (fifo && !cJSON_IsBool(fifo))
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: \"fan_in_fan_out\" must be a "
                                    "boolean", path);
    c->fan_in_fan_out = cJSON_IsTrue(fifo);
    c->rank_pattern = cJSON_GetObjectItemCaseSensitive(root, "rank_pattern");
    c->alpha_pattern = cJSON_GetObjectItemCaseSensitive(root, "alpha_pattern");
    const cJSON *pats[2] = {c->rank_pattern, c->alpha_pattern};
    for (int i = 0; i < 2; i++) {
        if (pats[i] && !cJSON_IsNull(pats[i]) && !cJSON_IsObject(pats[i]))
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: \"%s\" must be an object", path,
                                        i ? "alpha_pattern" : "rank_pattern");
        for (const cJSON *e = pats[i] ? pats[i]->child : NULL; e; e = e->next)
            if (!cJSON_IsNumber(e) || e->valuedouble <= 0)
                return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                            "%s: %s entry '%s' must be a "
                                            "positive number", path,
                                            i ? "alpha_pattern"
                                              : "rank_pattern", e->string);
    }
    return LM_OK;
}

/* glibc's regcomp copies the tree for every stacked quantifier ("a+++"),
 * so a hostile config could make it allocate gigabytes: refuse long
 * patterns and quantifiers that follow quantifiers. Real keys are module
 * names with at most a few plain quantifiers. */
static bool pattern_is_tame(const char *p)
{
    if (strlen(p) > 256)
        return false;
    bool prev_quantifier = false;
    int quantifiers = 0;
    for (; *p; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            prev_quantifier = false;
            continue;
        }
        bool q = *p == '+' || *p == '*' || *p == '?' || *p == '{';
        if (q && (prev_quantifier || ++quantifiers > 16))
            return false;
        if (*p == '{') { /* skip the bound to its '}' */
            while (p[1] && p[1] != '}')
                p++;
            if (p[1])
                p++;
        }
        prev_quantifier = q;
    }
    return true;
}

/* PEFT picks the first pattern key that matches the end of the module
 * name at a '.' boundary: re.match(rf"(.*\.)?{key}$", name). */
static lm_status pattern_value(lm_context *ctx, const char *path,
                               const cJSON *patterns, const char *module,
                               double fallback, double *out)
{
    *out = fallback;
    for (const cJSON *e = patterns ? patterns->child : NULL; e; e = e->next) {
        if (!pattern_is_tame(e->string))
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: pattern '%.64s' is too long or "
                                        "stacks quantifiers", path,
                                        e->string);
        size_t n = strlen(e->string) + 16;
        char *re = lm_alloc(ctx, n);
        if (!re)
            return LM_ERR_OUT_OF_MEMORY;
        snprintf(re, n, "^(.*\\.)?(%s)$", e->string);
        regex_t rx;
        int rc = regcomp(&rx, re, REG_EXTENDED | REG_NOSUB);
        lm_free(ctx, re);
        if (rc != 0)
            return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                        "%s: pattern '%s' is not a regular "
                                        "expression libmerge understands",
                                        path, e->string);
        bool match = regexec(&rx, module, 0, NULL, 0) == 0;
        regfree(&rx);
        if (match) {
            *out = e->valuedouble;
            return LM_OK;
        }
    }
    return LM_OK;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* "<module>.lora_A.weight" -> module and which factor; NULL module when
 * the key is not a LoRA factor. Returns the length of the module part. */
static size_t split_key(const char *key, int *which)
{
    static const char *suffixes[2] = {".lora_A.weight", ".lora_B.weight"};
    for (int i = 0; i < 2; i++) {
        if (ends_with(key, suffixes[i])) {
            *which = i;
            return strlen(key) - strlen(suffixes[i]);
        }
    }
    return 0;
}

static lm_status unsupported_key(lm_context *ctx, const char *path,
                                 const char *key)
{
    const char *why = strstr(key, "lora_magnitude_vector")
                          ? "DoRA magnitude vectors are not supported"
                      : strstr(key, "lora_embedding_")
                          ? "LoRA on embeddings is not supported yet"
                      : strstr(key, "modules_to_save")
                          ? "modules_to_save (fully trained modules) are not "
                            "supported"
                          : NULL;
    if (why)
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED, "%s: '%s': %s",
                                    path, key, why);
    return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                "%s: '%s' is not a LoRA factor "
                                "(base_model.model.<module>.lora_A/B.weight)",
                                path, key);
}

static lm_status add_pair(lm_context *ctx, const char *path,
                          const struct peft_config *c, lm_lora *lora,
                          const char *module, const lm_tensor *a,
                          const lm_tensor *b)
{
    if (a->ndim != 2 || b->ndim != 2 || a->shape[0] != b->shape[1])
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: '%s': lora_A must be [r, in] and "
                                    "lora_B [out, r] with the same r", path,
                                    module);
    double r, alpha;
    LM_TRY(pattern_value(ctx, path, c->rank_pattern, module, c->r, &r));
    LM_TRY(pattern_value(ctx, path, c->alpha_pattern, module, c->alpha,
                         &alpha));
    if ((double)a->shape[0] != r)
        return lm_context_set_error(ctx, LM_ERR_FORMAT,
                                    "%s: '%s' has rank %lld but the config "
                                    "says %g", path, module,
                                    (long long)a->shape[0], r);
    double scale = c->rslora ? alpha / sqrt(r) : alpha / r;
    size_t n = strlen(module) + 8;
    char *target = lm_alloc(ctx, n);
    if (!target)
        return LM_ERR_OUT_OF_MEMORY;
    snprintf(target, n, "%s.weight", module);
    lm_tensor *ca = NULL, *cb = NULL;
    lm_status st = lm_tensor_clone(ctx, a, &ca);
    if (st == LM_OK)
        st = lm_tensor_clone(ctx, b, &cb);
    if (st == LM_OK)
        st = lm_lora_add(lora, target, ca, cb, scale);
    if (st != LM_OK) {
        lm_tensor_destroy(ca);
        lm_tensor_destroy(cb);
    } else if (c->fan_in_fan_out) {
        st = lm_lora_set_transposed(lora, target, 1);
    }
    lm_free(ctx, target);
    return st;
}

/* The factor's partner: the key with lora_A and lora_B swapped. */
static const lm_tensor *partner_of(const lm_model *m, char *buf,
                                   const char *key, size_t mod_len, int which)
{
    memcpy(buf, key, mod_len);
    strcpy(buf + mod_len, which ? ".lora_A.weight" : ".lora_B.weight");
    return lm__model_lookup(m, buf);
}

static lm_status read_factors(lm_context *ctx, const char *path,
                              const struct peft_config *c, const lm_model *m,
                              lm_lora *lora)
{
    for (size_t i = 0; i < lm_model_count(m); i++) {
        const char *key = lm_model_name_at(m, i);
        int which = -1;
        size_t mod_len = split_key(key, &which);
        if (strncmp(key, PREFIX, strlen(PREFIX)) || mod_len <= strlen(PREFIX))
            return unsupported_key(ctx, path, key);
        /* Both the partner key and the module fit in strlen(key) + 1. */
        char *buf = lm_alloc(ctx, strlen(key) + 1);
        if (!buf)
            return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                        "%s: out of memory reading tensor "
                                        "'%s'", path, key);
        const lm_tensor *mate = partner_of(m, buf, key, mod_len, which);
        lm_status st = LM_OK;
        if (!mate)
            st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                      "%s: '%s' has no matching %s", path,
                                      key, which ? "lora_A" : "lora_B");
        else if (which == 0) { /* each pair once, from its lora_A */
            size_t n = mod_len - strlen(PREFIX);
            memmove(buf, key + strlen(PREFIX), n);
            buf[n] = '\0';
            st = lm__oom_in(ctx, add_pair(ctx, path, c, lora, buf,
                                          lm_model_at(m, i), mate),
                            path, "module", buf);
        }
        lm_free(ctx, buf);
        LM_TRY(st);
    }
    return LM_OK;
}

static lm_status read_config(lm_context *ctx, const char *cfg_path,
                             cJSON **root)
{
    char *text = NULL;
    size_t len = 0;
    LM_TRY(lm__read_input(ctx, NULL, cfg_path, MAX_CONFIG, &text, &len));
    lm_status st = lm__json_check(ctx, cfg_path, text, len, "");
    if (st == LM_OK) {
        *root = cJSON_ParseWithLength(text, len);
        if (!*root && lm__json_parse_ran_out_of_memory(text, len))
            st = lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                      "%s: out of memory parsing %zu bytes "
                                      "of JSON", cfg_path, len);
        else if (!*root)
            st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                      "%s: not well-formed JSON", cfg_path);
    }
    lm_free(ctx, text);
    return st;
}

/* Which of the two files is missing, or neither. A path that exists but
 * is not a regular file (a FIFO, a directory) is left to the readers,
 * which refuse it by name. */
static lm_status check_files(lm_context *ctx, const char *dir,
                             const char *cfg_path, const char *st_path)
{
    if (!exists(cfg_path))
        return lm_context_set_error(ctx, LM_ERR_IO,
                                    "'%s' is not a PEFT adapter directory "
                                    "(no adapter_config.json)", dir);
    if (exists(st_path))
        return LM_OK;
    char *bin = lm__path_join(ctx, dir, "adapter_model.bin");
    if (!bin)
        return lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                    "out of memory opening '%s'", dir);
    bool pickle = file_exists(bin);
    lm_free(ctx, bin);
    if (pickle)
        return lm_context_set_error(ctx, LM_ERR_UNSUPPORTED,
                                    "%s: adapter_model.bin (pickle) is not "
                                    "supported; save the adapter with "
                                    "safe_serialization=True", dir);
    return lm_context_set_error(ctx, LM_ERR_IO,
                                "%s: no adapter_model.safetensors", dir);
}

lm_status lm_peft_read(lm_context *ctx, const char *dir, lm_lora **out)
{
    if (!ctx || !dir || !out)
        return LM_ERR_INVALID_ARGUMENT;
    char *cfg_path = lm__path_join(ctx, dir, "adapter_config.json");
    char *st_path = lm__path_join(ctx, dir, "adapter_model.safetensors");
    lm_status st = cfg_path && st_path
                       ? check_files(ctx, dir, cfg_path, st_path)
                       : lm_context_set_error(ctx, LM_ERR_OUT_OF_MEMORY,
                                              "out of memory opening '%s'",
                                              dir);
    cJSON *root = NULL;
    if (st == LM_OK)
        st = read_config(ctx, cfg_path, &root);
    struct peft_config c;
    memset(&c, 0, sizeof(c));
    if (st == LM_OK)
        st = parse_config(ctx, cfg_path, root, &c);
    lm_model *m = NULL;
    lm_lora *lora = NULL;
    if (st == LM_OK)
        st = lm_safetensors_read(ctx, st_path, &m);
    if (st == LM_OK)
        st = lm_lora_create(ctx, &lora);
    if (st == LM_OK)
        st = read_factors(ctx, st_path, &c, m, lora);
    if (st == LM_OK && lm_lora_count(lora) == 0)
        st = lm_context_set_error(ctx, LM_ERR_FORMAT,
                                  "%s: no LoRA factors", st_path);
    lm_model_destroy(m);
    cJSON_Delete(root);
    lm_free(ctx, cfg_path);
    lm_free(ctx, st_path);
    if (st != LM_OK) {
        lm_lora_destroy(lora);
        return st;
    }
    *out = lora;
    return LM_OK;
}
