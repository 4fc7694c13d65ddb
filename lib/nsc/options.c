/* Option defaults as functions, so bindings never copy the C macros. */
#include "libmerge/experimental/nsc.h"

void lm_nsc_options_init(lm_nsc_options *options)
{
    if (options)
        *options = (lm_nsc_options)LM_NSC_OPTIONS_INIT;
}

void lm_nsc_spsa_options_init(lm_nsc_spsa_options *options)
{
    if (options)
        *options = (lm_nsc_spsa_options)LM_NSC_SPSA_OPTIONS_INIT;
}
